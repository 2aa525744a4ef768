"""Attention scaling study (At-a, C-a): naive attention eager, compiled, and fused, per (d, T).

The handout's benchmark: batch 8, no head dimension, random Q, K, V of shape (B, T, d) that
require gradients; warm-up; time forward passes, measure the memory in use before the
backward pass, time backward passes, with a device sync around each. Each timed pass is a
forward then a backward on its graph, each timed on its own between syncs (timing.time_phases,
NVTX ranges "forward" and "backward" inside "step"), so n passes give n forward and n backward
times; the memory is measured on one more forward, before its backward. Three variants:

- "eager": the model's own `lmreport.model.scaled_dot_product_attention` with the causal
  mask the model uses (a (T, T) bool tensor), so it materialises the T x T scores;
- "compiled": the same function under `torch.compile` (its NVTX ranges vanish while Dynamo
  traces, so it is one graph);
- "sdpa": `torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)`, the fused
  reference. Q, K, V get a head axis of size 1 ((B, 1, T, d)): the fused kernels need 4-D
  inputs and fall back to the T x T math path on 3-D ones.

Memory: the bytes of every distinct storage autograd saves for backward (saved_tensors_hooks,
any device), next to the accounting formulas. On CUDA also `memory_allocated` before the
backward pass (what the handout asks) and `max_memory_allocated` over forward + backward. On
the CPU the live bytes before backward and the peak come from a tracker of live operator
outputs (`LiveBytes`, eager variants only: compiled code allocates outside the dispatcher).

Cells with source "estimated" run the eager variant at the handout's sizes on the `meta`
device (shapes only, nothing allocated), so a CPU machine still checks the formulas at
T = 16,384.
"""

from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_iter

from lmreport import accounting as acc
from lmreport.device import synchronize
from lmreport.model import scaled_dot_product_attention
from lmreport.presets import ATTENTION_CPU_GRID as CPU_GRID
from lmreport.presets import ATTENTION_HANDOUT_GRID as HANDOUT_GRID
from lmreport.presets import ATTENTION_OOM_PROBE as OOM_PROBE
from lmreport.presets import ATTENTION_VARIANTS as VARIANTS
from lmreport.presets import AttentionGrid as Grid
from lmreport.runner import Cell, Plan, cell
from lmreport.saved_tensors import measure_saved_bytes, saved_by_node
from lmreport.timing import time_phases, timed_work, untimed_phase

SECTION = "attention"
# VARIANTS, HANDOUT_GRID and CPU_GRID live in presets.py (the report reads them without torch).


def grid_for(plan: Plan) -> Grid:
    """The profile's own grid (gpu-quick), else the handout's on CUDA and the CPU grid elsewhere."""
    if plan.profile.attention_grid is not None:
        return plan.profile.attention_grid
    return HANDOUT_GRID if plan.profile.device == "cuda" else CPU_GRID


def cell_name(variant: str, d: int, seq_len: int, source: str = "measured") -> str:
    prefix = "estimate-" if source == "estimated" else ""
    return f"{prefix}{variant}-d{d}-T{seq_len}"


def cells(plan: Plan) -> list[Cell]:
    g = grid_for(plan)
    requires = "cuda" if plan.profile.device == "cuda" else "any"
    # Variant-major order: in one process (inline executor) the compiled cells run back to back
    # and share one compilation.
    out = [cell(plan, SECTION, cell_name(v, d, t), requires=requires, d=d, seq_len=t, batch=g.batch,
                variant=v, source="measured", warmup=g.warmup, passes=g.passes)
           for v in VARIANTS for d in g.d for t in g.seq_len]
    if g.oom_probe is not None:
        # Last of the measured cells, and CUDA only whatever the profile: on a CPU its 17 GB mask alone would
        # swap instead of failing. On a GPU the first T x T product fails at its allocation (no GPU has the
        # hundreds of GB it asks for), so the cell ends in a real CUDA OOM within a second, recorded `oom`.
        d, t = g.oom_probe
        out.append(cell(plan, SECTION, cell_name("eager", d, t), requires="cuda", d=d, seq_len=t, batch=g.batch,
                        variant="eager", source="measured", warmup=0, passes=1, purpose=OOM_PROBE))
    h = HANDOUT_GRID
    out += [cell(plan, SECTION, cell_name("eager", d, t, "estimated"), d=d, seq_len=t, batch=h.batch,
                 variant="eager", source="estimated")
            for d in h.d for t in h.seq_len]
    return out


# --- the three variants ---------------------------------------------------------------------

_COMPILED: dict[bool, Callable] = {}  # dynamic -> compiled function, one per process


def compiled_attention(dynamic: bool = True) -> Callable:
    """The model's attention under torch.compile, compiled once per process.

    With dynamic shapes (B, T and d symbolic) one compilation serves every (d, T) of a sweep
    run in one process (the inline executor, the default without CUDA); cells that run in processes
    of their own (subprocess, local-gpus, Slurm), or in the worker executor, which empties Dynamo's
    caches before each cell (launchers/worker.py), find the same graph in Inductor's on-disk
    FX graph cache instead of compiling it again, which static shapes would defeat (one graph
    per shape).
    """
    if dynamic not in _COMPILED:
        _COMPILED[dynamic] = torch.compile(scaled_dot_product_attention, dynamic=dynamic)
    return _COMPILED[dynamic]


def causal_mask(seq_len: int, device) -> torch.Tensor:
    """(T, T) bool, True = attend: the mask TransformerLM.forward builds."""
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch's fused attention, causal; a head axis of size 1 selects the fused kernels."""
    return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), is_causal=True).squeeze(1)


def attention_call(variant: str, q, k, v, dynamic: bool = True) -> tuple[Callable[[], torch.Tensor], tuple]:
    """(a no-argument callable running one forward pass of the variant on q, k, v, the tensors it holds)."""
    if variant == "sdpa":
        return (lambda: fused_attention(q, k, v)), ()
    mask = causal_mask(q.shape[-2], q.device)
    fn = compiled_attention(dynamic) if variant == "compiled" else scaled_dot_product_attention
    return (lambda: fn(q, k, v, mask)), (mask,)


# --- live bytes of operator outputs (CPU and meta) ------------------------------------------


class LiveBytes(TorchDispatchMode):
    """Bytes of the distinct storages alive, counted at every operator; keeps the peak.

    The storages of `existing` tensors count from the start; every storage an operator
    returns counts until it is freed (a weakref finalizer on the storage, whose Python object
    PyTorch keeps unique). Allocations inside a kernel, or by compiled code that bypasses the
    dispatcher, are not seen: use it for eager code, where operator outputs are the memory.

    The kernel allocations known to happen on a device (`temporaries`: aten operator ->
    accounting.KernelTemporary, from accounting.kernel_temporaries) are added while their
    operator runs, to a second peak, `peak_with_temporaries_bytes`: the operator's output is
    already counted then, and its temporary lives until the kernel returns.
    """

    def __init__(self, existing=(), temporaries: dict | None = None):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self.peak_with_temporaries_bytes = 0
        self.temporaries = temporaries or {}
        self._sizes: dict[int, int] = {}
        for t in existing:
            if t is not None:
                self._track(t)
        self.existing_bytes = self.live_bytes

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._sizes:
            return
        self._sizes[key] = storage.nbytes()
        self.live_bytes += storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self.peak_with_temporaries_bytes = max(self.peak_with_temporaries_bytes, self.live_bytes)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live_bytes -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_iter(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        temporary = self.temporaries.get(func._schema.name)
        if temporary is not None:
            like = args[temporary.like_arg]
            self.peak_with_temporaries_bytes = max(self.peak_with_temporaries_bytes,
                                                   self.live_bytes + like.numel() * like.element_size())
        return out


# --- one cell ---------------------------------------------------------------------------------


def random_qkv(batch: int, seq_len: int, d: int, device, seed: int = 0):
    """Q, K, V (B, T, d) fp32 requiring grad, and a random gradient for the output."""
    gen = torch.Generator().manual_seed(seed)
    def rand():
        return torch.randn(batch, seq_len, d, generator=gen).to(device) if device != "meta" \
            else torch.empty(batch, seq_len, d, device="meta")
    q, k, v = (rand().requires_grad_() for _ in range(3))
    return q, k, v, rand()


def _clear_grads(*ts) -> None:
    for t in ts:
        t.grad = None


def _saved(forward: Callable[[], torch.Tensor], q, k, v) -> tuple[torch.Tensor, dict]:
    out, saved = measure_saved_bytes(forward, [q, k, v])
    by_node = saved_by_node(out, [q, k, v])
    return out, {"saved_bytes": saved.total_bytes, "saved_input_bytes": saved.parameter_bytes,
                 "saved_activation_bytes": saved.activation_bytes,
                 "saved_bytes_by_node": dict(by_node.bytes_by_node.most_common())}


def _live_bytes(forward: Callable[[], torch.Tensor], q, k, v, grad_out, held=(), for_device: str | None = None) -> dict:
    """Live bytes before the forward (the inputs), before backward, and the peak over forward + backward,
    by the tracker; for_device="cuda" adds the peak with CUDA's kernel temporaries."""
    _clear_grads(q, k, v)
    temporaries = acc.kernel_temporaries(for_device) if for_device else {}
    with LiveBytes(existing=(q, k, v, grad_out, *held), temporaries=temporaries) as live:
        out = forward()
        before = live.live_bytes
        out.backward(grad_out)
        del out
    _clear_grads(q, k, v)
    metrics = {"live_before_forward_bytes": live.existing_bytes, "live_before_backward_bytes": before,
               "live_peak_bytes": live.peak_bytes}
    if for_device:
        metrics[f"live_peak_{for_device}_bytes"] = live.peak_with_temporaries_bytes
        metrics["kernel_temporaries"] = sorted(temporaries)
    return metrics


def estimate(cfg: dict) -> dict:
    """The eager variant on `meta` at full size: what autograd saves and what is live, no memory used.

    The peak comes twice: as the dispatcher sees it (`live_peak_bytes`, operator outputs only) and
    for CUDA (`live_peak_cuda_bytes`), with the allocations CUDA kernels make below the dispatcher
    (accounting.CUDA_KERNEL_TEMPORARIES: softmax backward's product dP * P).
    """
    q, k, v, grad_out = random_qkv(cfg["batch"], cfg["seq_len"], cfg["d"], "meta")
    forward, held = attention_call("eager", q, k, v)
    _, metrics = _saved(forward, q, k, v)
    metrics.update(_live_bytes(forward, q, k, v, grad_out, held, for_device="cuda"), device="meta")
    return {"metrics": metrics}


def _cuda_bytes(device: str) -> dict:
    props = torch.cuda.get_device_properties(torch.device(device))
    return {"device_total_bytes": props.total_memory}


def run_cell(c: Cell, artifacts_dir: Path) -> dict:
    cfg = c.config
    if cfg["source"] == "estimated":
        return estimate(cfg)
    device = "cuda" if c.requires == "cuda" else "cpu"
    variant, batch, seq_len, d = cfg["variant"], cfg["batch"], cfg["seq_len"], cfg["d"]
    on_cuda = device.startswith("cuda")
    phase_now = "setup"
    try:
        q, k, v, grad_out = random_qkv(batch, seq_len, d, device)
        dynamic = True
        forward, held = attention_call(variant, q, k, v, dynamic=dynamic)
        metrics: dict = {"device": device}
        if on_cuda:
            metrics.update(_cuda_bytes(device))

        def step(phase) -> None:
            nonlocal phase_now
            _clear_grads(q, k, v)
            phase_now = "forward"
            with phase("forward"):
                out = forward()
            phase_now = "backward"
            with phase("backward"):
                out.backward(grad_out)

        # First pass alone: for "compiled" it is the compilation (none when this process has
        # already compiled the function for these shapes).
        with timed_work():
            synchronize(device)
            t0 = time.perf_counter()
            step(untimed_phase)
            synchronize(device)
            metrics["first_pass_s"] = time.perf_counter() - t0
        if variant == "compiled":
            from torch._dynamo.utils import counters
            metrics["compile_dynamic"] = dynamic
            # Inductor may swap a recognised attention pattern for SDPA (fx_passes/fuse_attention.py):
            # how many it replaced in this process so far.
            metrics["inductor_fused_attention_patterns"] = counters["inductor"]["fuse_attention"]

        stats = time_phases(step, device, warmup=cfg["warmup"], steps=cfg["passes"])
        metrics["forward_ms"] = stats["forward"].to_metric()
        metrics["backward_ms"] = stats["backward"].to_metric()

        # Memory before backward: one more forward, its saved tensors, then the backward.
        phase_now = "memory measurement"
        _clear_grads(q, k, v)
        if on_cuda:
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            metrics["allocated_before_forward_bytes"] = torch.cuda.memory_allocated(device)
        out, saved = _saved(forward, q, k, v)
        metrics.update(saved)
        if on_cuda:
            synchronize(device)
            metrics["allocated_before_backward_bytes"] = torch.cuda.memory_allocated(device)
        out.backward(grad_out)
        del out
        if on_cuda:
            synchronize(device)
            metrics["max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        elif variant != "compiled":
            metrics.update(_live_bytes(forward, q, k, v, grad_out, held))
        return {"metrics": metrics}
    except torch.OutOfMemoryError as e:
        # Say where it ran out; the runner records the cell as `oom`.
        raise torch.OutOfMemoryError(f"out of memory during {phase_now} (B={batch}, T={seq_len}, d={d}): "
                                     f"{str(e).splitlines()[0] if str(e) else ''}") from None
    except RuntimeError as e:
        if "can't allocate memory" not in str(e):  # the CPU allocator's words for out of memory
            raise
        raise MemoryError(f"out of memory during {phase_now} (B={batch}, T={seq_len}, d={d}): "
                          f"{str(e).splitlines()[0]}") from None
    finally:
        q = k = v = grad_out = forward = held = None  # noqa: F841 - drop references before freeing
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
