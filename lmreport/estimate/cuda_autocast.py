"""CUDA autocast's rules where CPU autocast differs, for the ops the reference model calls.

Estimates run on fake CPU tensors (a CPU-only torch build cannot run autograd on fake CUDA
tensors), so `torch.autocast("cpu", bfloat16)` decides the dtypes. The two autocasts share
the cast machinery (at::autocast::cached_cast, including the cache of low-precision weight
copies) and agree on every op of the reference model (lmreport/model.py) but one family:
CUDA runs softmax and log_softmax in fp32 ("fp32_set_opt_dtype" policy,
AT_FORALL_FP32_SET_OPT_DTYPE in aten/src/ATen/autocast_mode.h), CPU autocast has no policy
for them and keeps bf16. Checked op by op: linear/matmul/bmm/mm are lower precision on
both; embedding, masked_fill, division, SiLU and element-wise products follow their inputs
on both; RMSNorm upcasts with .float() before pow/rsqrt (fp32 on CUDA by policy, fp32 on
CPU because the input already is); cross_entropy casts the logits to fp32 then runs
_log_softmax and nll_loss in fp32 on both (seen at the dispatcher).

`CudaAutocastRules` is a TorchFunctionMode (it acts above autograd, where autocast acts, so
autograd saves what CUDA would save): under CPU autocast, softmax/log_softmax of a
low-precision input without an explicit dtype get dtype=float32, which is exactly what the
CUDA policy does (set_opt_dtype(at::kFloat, ...)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# function -> index of its dtype argument (a dtype passed positionally means the caller chose one)
_FP32_SET_OPT_DTYPE = {
    torch.softmax: 2, torch.log_softmax: 2,
    torch.Tensor.softmax: 2, torch.Tensor.log_softmax: 2,
    F.softmax: 3, F.log_softmax: 3,
}
_LOW = (torch.bfloat16, torch.float16)


class CudaAutocastRules(TorchFunctionMode):
    """Give CPU autocast CUDA's fp32 policy for softmax and log_softmax."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        pos = _FP32_SET_OPT_DTYPE.get(func)
        if (pos is not None and len(args) <= pos and kwargs.get("dtype") is None and torch.is_autocast_enabled("cpu")
                and isinstance(args[0], torch.Tensor) and args[0].dtype in _LOW):
            kwargs = {**kwargs, "dtype": torch.float32}
        return func(*args, **kwargs)
