"""Numerics of low precision: the accumulation loops, format facts, autocast dtypes, norm sensitivity.

Everything is computed by torch on the device it runs on; nothing here is a typed result. The
experiments (lmreport/experiments/precision.py) record what these functions return, the
report explains it from the recorded values.

Formats (IEEE 754 binary32/binary16, and bfloat16 = the top 16 bits of binary32): the spacing
of representable numbers near x (one ULP) is 2^(floor(log2 x)) * eps, eps = 2^-mantissa_bits;
near 10 that is 2^3 * eps. torch.finfo gives eps, max and the smallest normal number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


# --- formats ---------------------------------------------------------------------------------


def ulp_near(x: float, dtype: torch.dtype) -> float:
    """Distance from x (as stored in dtype) to the next representable number above it."""
    t = torch.tensor(x, dtype=dtype)
    return (torch.nextafter(t, torch.tensor(math.inf, dtype=dtype)) - t).item()


def format_facts(name: str, near: float = 10.0) -> dict:
    """eps, max, smallest normal, mantissa bits and the ULP near `near` of one format."""
    dtype = DTYPES[name]
    fi = torch.finfo(dtype)
    return {"format": name, "eps": fi.eps, "max": fi.max, "smallest_normal": fi.tiny,
            "mantissa_bits": round(-math.log2(fi.eps)), "exponent_bits": fi.bits - 1 - round(-math.log2(fi.eps)),
            "ulp_near": near, "ulp": ulp_near(near, dtype),
            # the same spacing from the format's definition: 2^floor(log2 x) * eps
            "ulp_from_eps": 2.0 ** math.floor(math.log2(near)) * fi.eps,
            "sqrt_max": math.sqrt(fi.max)}


# --- P-1: accumulation -----------------------------------------------------------------------


@dataclass(frozen=True)
class Loop:
    """One accumulation loop: `s += addend` n times, s in `accumulator`, addend in `addend`."""

    name: str
    accumulator: str  # format of the running sum
    addend: str  # format of the tensor 0.01 is stored in
    cast: bool  # addend explicitly cast to the accumulator's format before the add

    def run(self, n: int = 1000, value: float = 0.01) -> float:
        # Written as the handout writes it: a 0-d tensor sum, a fresh tensor each step.
        s = torch.tensor(0, dtype=DTYPES[self.accumulator])
        for _ in range(n):
            x = torch.tensor(value, dtype=DTYPES[self.addend])
            s += x.type(DTYPES[self.accumulator]) if self.cast else x
        return s.item()


LOOPS = (
    Loop("fp32 += fp32", "fp32", "fp32", False),
    Loop("fp16 += fp16", "fp16", "fp16", False),
    Loop("fp32 += fp16", "fp32", "fp16", False),
    Loop("fp32 += fp16 cast to fp32", "fp32", "fp16", True),
    Loop("bf16 += bf16", "bf16", "bf16", False),
    Loop("fp32 += bf16", "fp32", "bf16", False),
    Loop("fp32 += bf16 cast to fp32", "fp32", "bf16", True),
)


def stored(value: float, fmt: str) -> float:
    """value rounded to the nearest number of format fmt."""
    return torch.tensor(value, dtype=DTYPES[fmt]).item()


def accumulation(n: int = 1000, value: float = 0.01) -> list[dict]:
    """Each loop's result, and its error split into representation and rounding parts.

    With the exact sum n * value: error = n * (stored addend - value)   [0.01 is not representable]
                                        + (result - n * stored addend)  [rounding of the running sum]
    """
    rows = []
    for loop in LOOPS:
        result = loop.run(n, value)
        addend = stored(value, loop.addend)
        rows.append({"name": loop.name, "accumulator": loop.accumulator, "addend_format": loop.addend,
                     "cast": loop.cast, "n": n, "value": value, "result": result,
                     "abs_error": abs(result - n * value), "stored_addend": addend,
                     "representation_error": n * addend - n * value,
                     "rounding_error": result - n * addend,
                     # the sum's ULP where the loop ends: each add is rounded to a multiple of it
                     "ulp_at_result": ulp_near(result, DTYPES[loop.accumulator])})
    return rows


# --- P-a: autocast dtypes of the toy model ---------------------------------------------------


class ToyModel(nn.Module):
    """The handout's toy model: fc1 (no bias) -> ReLU -> LayerNorm -> fc2 (no bias)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, 10, bias=False)
        self.ln = nn.LayerNorm(10)
        self.fc2 = nn.Linear(10, out_features, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.fc1(x))
        x = self.ln(x)
        x = self.fc2(x)
        return x


class _MatmulOperands(TorchDispatchMode):
    """Records the dtypes the matrix-multiply kernels receive (after autocast's casts)."""

    MATMULS = ("aten.mm", "aten.addmm", "aten.bmm", "aten.matmul", "aten.linear")

    def __init__(self):
        super().__init__()
        self.calls: list[list[str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.MATMULS):
            self.calls.append([DTYPE_NAMES.get(a.dtype, str(a.dtype)) for a in args if isinstance(a, torch.Tensor)])
        return func(*args, **(kwargs or {}))


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def toy_autocast_dtypes(device: str, low: str, batch: int = 8, in_features: int = 20, out_features: int = 5,
                        seed: int = 0) -> dict:
    """Dtypes of the ToyModel under autocast(device, low): measured with forward hooks and .grad."""
    torch.manual_seed(seed)
    model = ToyModel(in_features, out_features).to(device)
    x = torch.randn(batch, in_features, device=device)
    y = torch.randint(out_features, (batch,), device=device)
    outputs: dict[str, str] = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda mod, args, out, name=name: outputs.__setitem__(name, _name(out.dtype)))
        for name in ("fc1", "relu", "ln", "fc2")]
    operands = _MatmulOperands()
    try:
        with torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[low]):
            params_inside = sorted({_name(p.dtype) for p in model.parameters()})
            with operands:
                logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
    return {
        "parameters inside autocast": ", ".join(params_inside),
        "fc1 matmul operands": " × ".join(operands.calls[0]) if operands.calls else "not seen",
        "fc1 output": outputs["fc1"],
        "ReLU output": outputs["relu"],
        "LayerNorm output": outputs["ln"],
        "logits": outputs["fc2"],
        "loss": _name(loss.dtype),
        "gradients": ", ".join(sorted({_name(p.grad.dtype) for p in model.parameters()})),
    }


# --- P-b: what in a normalisation layer is sensitive to low precision -------------------------


def square_overflow(values: tuple[float, ...] = (100.0, 255.0, 256.0, 300.0, 1000.0, 1e5)) -> list[dict]:
    """x and x*x in each format; x*x is None where it overflows to inf."""
    rows = []
    for v in values:
        row = {"x": v}
        for name, dt in DTYPES.items():
            x = torch.tensor(v, dtype=dt)
            sq = (x * x).item()
            row[name] = {"x": x.item(), "square": None if math.isinf(sq) else sq, "overflow": math.isinf(sq)}
        rows.append(row)
    return rows


def naive_rms_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm without the fp32 upcast: every step in x's own dtype."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rms_norm_with_outlier(outlier: float = 300.0, d: int = 64, seed: int = 0) -> dict:
    """A row of N(0,1) values with one outlier, normalised in fp16 naively and with the fp32 upcast."""
    from lmreport.model import RMSNorm
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(d, generator=g)
    x[0] = outlier
    reference = naive_rms_norm(x.double())
    naive = naive_rms_norm(x.half())
    upcast = RMSNorm(d)(x.half())  # the model's RMSNorm: fp32 inside, fp16 out
    mean_sq = x.half().pow(2).mean().item()

    def err(t):
        return (t.double() - reference).abs().max().item()

    return {"outlier": outlier, "d": d, "fp16_mean_of_squares": None if math.isinf(mean_sq) else mean_sq,
            "fp16_mean_of_squares_overflow": math.isinf(mean_sq),
            "naive_fp16_max_abs_output": naive.abs().max().item(), "naive_fp16_all_zero": bool((naive == 0).all()),
            "naive_fp16_max_error": err(naive), "upcast_fp16_max_error": err(upcast),
            "reference_max_abs_output": reference.abs().max().item()}


def _sequential_sum(values: torch.Tensor) -> float:
    """Sum one value at a time in values' dtype: a running sum rounded after every add."""
    s = torch.zeros((), dtype=values.dtype)
    for v in values:
        s += v
    return s.item()


def mean_error_by_width(widths: tuple[int, ...] = (16, 64, 256, 1024, 4096, 16384), seed: int = 0) -> list[dict]:
    """Relative error of mean(x^2) over d values, x ~ N(0, 1): the statistic RMSNorm divides by.

    Two ways per format: a running sum kept in the format (what a naive kernel or a low-precision
    accumulator does), and torch.mean on inputs stored in the format (PyTorch's CPU and CUDA
    reductions accumulate half and bfloat16 in fp32, so only input and output rounding remain).
    """
    g = torch.Generator().manual_seed(seed)
    rows = []
    for d in widths:
        sq = torch.randn(d, generator=g, dtype=torch.float64).pow(2)
        exact = sq.mean().item()
        row = {"d": d, "exact": exact}
        for name, dt in DTYPES.items():
            low = sq.to(dt)
            running = _sequential_sum(low) / d
            library = low.mean().item()
            row[name] = {"running_sum_rel_error": abs(running - exact) / exact,
                         "torch_mean_rel_error": abs(library - exact) / exact}
        rows.append(row)
    return rows


def eps_representation(eps: float = 1e-5) -> dict:
    """How the norm's eps is stored in each format, and whether it survives `1 + eps`."""
    out = {}
    for name, dt in DTYPES.items():
        e = torch.tensor(eps, dtype=dt)
        out[name] = {"stored": e.item(), "rel_error": abs(e.item() - eps) / eps,
                     "subnormal": e.item() < torch.finfo(dt).tiny,
                     "one_plus_eps_is_one": (torch.tensor(1.0, dtype=dt) + e).item() == 1.0}
    return out
