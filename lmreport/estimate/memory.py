"""Estimate the memory of one step of the shared workload at full size, on fake tensors.

The run's model (lmreport's, or the user's `--model`: user_model.py) is built on `meta` (nothing
allocated, no initialisation), its parameters and buffers are replaced by fake CPU tensors
(torch._subclasses.FakeTensorMode: shapes, dtypes, autograd and autocast work, no byte is
allocated), and one step of lmreport.workloads.Workload runs under the storage tracker. A model
`meta` cannot build is built under FakeTensorMode instead (`fallback` says why); one that reads
values of its tensors cannot be estimated at all (user_model.NotAbstract). What is estimated is what a measured cell measures:

- "train", step="steady" (default): a step after warm-up. The optimizer state exists (one
  real AdamW step on fake tensors has created m and v), gradients are None when the step
  starts (Workload.step sets them to None), so the peak is reached in backward or in the
  optimizer update. step="first": the first step, which also allocates m and v inside.
- "forward": inference under torch.no_grad(); activations are freed as the layers go, so
  the peak barely moves with context. grad=True: a forward pass with autograd recording
  and its output kept (what a snapshot taken right after `model(x)` shows).
- dtype "bf16": the workload's autocast; target="cuda" applies CUDA's autocast rules
  (cuda_autocast.py), target="cpu" keeps CPU autocast's (to compare with a real CPU run).

Work shared between estimates of one size (the fake model and the warm optimizer state) is
cached per process: fake tensors hold no data and a step leaves them unchanged, so reusing
them is exactly a fresh build.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from lmreport.estimate.checkpointing import checkpointed_layers
from lmreport.estimate.cuda_autocast import CudaAutocastRules
from lmreport.estimate.tracker import CATEGORIES, Replay, StorageTracker
from lmreport import user_model
from lmreport.presets import ModelConfig
from lmreport.workloads import AUTOCAST_DTYPES, MODES, Workload

TIMELINE_POINTS = 600
TOP = 10


@dataclass
class MemoryEstimate:
    peak_bytes: int
    breakdown: dict[str, int]  # CATEGORIES at the peak
    weight_copies_bytes: int  # autocast's low-precision weight copies at the peak (part of temporaries)
    initial_bytes: int  # before the step: parameters (+ optimizer state) + the batch
    final_bytes: int  # after the step, before anything is released
    peak_event: int
    events: int
    ops: int
    peak_phase: str | None
    phase_peaks: dict[str, int]  # highest memory inside each phase
    phase_spans: list[dict]  # {"name", "start", "end"} in events
    timeline: dict  # {"x": events, "x_unit": "event", <category>: bytes per point}
    top_allocations: list[dict]  # alive at the peak: size_bytes, source, category, count
    config: dict = field(default_factory=dict)
    seconds: float = 0.0
    built_on: str = "meta"  # where the model was built before its tensors were made fake: "meta" or "fake"
    fallback: str | None = None  # why it was not built on meta

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """The JSON of `lmreport estimate memory --json`."""
        return {"peak_bytes": self.peak_bytes, "breakdown": dict(self.breakdown)}


# --- the fake model -----------------------------------------------------------------------------


@dataclass
class _FakeModel:
    fake: FakeTensorMode
    model: torch.nn.Module
    spec: user_model.ModelSpec
    context_length: int  # RoPE built for this many tokens
    fallback: str | None = None  # why it was built under FakeTensorMode rather than on meta
    steady_optimizer: torch.optim.Optimizer | None = None  # warmed once: m and v exist


_CACHE: dict[tuple, _FakeModel] = {}


def _fake_model(cfg: ModelConfig, ctx: int, spec: user_model.ModelSpec | None = None) -> _FakeModel:
    spec = spec or user_model.reference()
    key = (spec.key, spec.model.sha256, cfg)
    fm = _CACHE.get(key)
    if fm is None or fm.context_length < ctx:
        length = max(ctx, cfg.context_length)
        model, fake, _, fallback = user_model.abstract_model(spec, cfg, length, "fake")
        fm = _CACHE[key] = _FakeModel(fake, model, spec, length, fallback)
    return fm


def _warm_optimizer(fm: _FakeModel) -> torch.optim.Optimizer:
    """The optimizer after one real step (on fake tensors): its state is what a warm-up leaves."""
    if fm.steady_optimizer is None:
        with fm.fake:
            opt = user_model.make_optimizer(fm.spec, fm.model.parameters())
            ids = torch.zeros(1, 9, dtype=torch.long)
            Workload(fm.model, opt, ids[:, :-1], ids[:, 1:], "train", "cpu", "fp32",
                     user_model.loss_function(fm.spec)).step()
            fm.model.zero_grad(set_to_none=True)
        fm.steady_optimizer = opt
    return fm.steady_optimizer


def clear_cache() -> None:
    _CACHE.clear()


# --- one estimate -------------------------------------------------------------------------------


def estimate_memory(cfg: ModelConfig, batch: int, ctx: int, mode: str, dtype: str = "fp32", *,
                    step: str = "steady", grad: bool = False, target: str = "cuda",
                    checkpoint_every: int | None = None, spec: user_model.ModelSpec | None = None) -> MemoryEstimate:
    """One step's memory (see the module doc) of spec's model (None: lmreport's); checkpoint_every=k runs
    the blocks of lmreport's model in activation checkpoints of k blocks (estimate/checkpointing.py).

    A bad mode, dtype, step or target raises ValueError; a user's model that fails on fake tensors (with
    any exception, a ValueError of its own included) raises user_model.NotAbstract with the reason."""
    _check_arguments(mode, dtype, step, target)
    try:
        return _estimate(cfg, batch, ctx, mode, dtype, step=step, grad=grad, target=target,
                         checkpoint_every=checkpoint_every, spec=spec)
    except user_model.UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code on fake tensors (reading a value, a device of its own)
        if spec is None or spec.is_reference:
            raise
        raise user_model.NotAbstract(f"not on fake tensors (FakeTensorMode): {type(e).__name__}: "
                                     f"{' '.join(str(e).split())[:300]}") from e


def _check_arguments(mode: str, dtype: str, step: str, target: str) -> None:
    """The estimator's own arguments, checked before any model code runs (so a ValueError raised by the user's
    model on fake tensors is never taken for one of these)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(AUTOCAST_DTYPES)}")
    if step not in ("steady", "first"):
        raise ValueError(f"unknown step {step!r}: steady or first")
    if target not in ("cuda", "cpu"):
        raise ValueError(f"unknown target {target!r}: cuda or cpu")


def _estimate(cfg: ModelConfig, batch: int, ctx: int, mode: str, dtype: str, *, step: str, grad: bool,
              target: str, checkpoint_every: int | None, spec: user_model.ModelSpec | None) -> MemoryEstimate:
    t0 = time.perf_counter()
    fm = _fake_model(cfg, ctx, spec)
    model = fm.model
    optimizer = None
    if mode == "train":
        optimizer = _warm_optimizer(fm) if step == "steady" else None
        if optimizer is None:
            with fm.fake:
                optimizer = user_model.make_optimizer(fm.spec, model.parameters())
    tracker = StorageTracker()
    kept = []  # outputs held to the end of a forward-with-grad (a snapshot taken after model(x))
    with fm.fake:
        model.zero_grad(set_to_none=True)
        ids = torch.zeros(batch, ctx + 1, dtype=torch.long)
        w = Workload(model, optimizer, ids[:, :-1].contiguous(), ids[:, 1:].contiguous(), mode, "cpu", dtype,
                     user_model.loss_function(fm.spec))
        del ids
        tracker.track_existing(model.parameters(), "parameters")
        if optimizer is not None:
            tracker.track_existing(_state_tensors(optimizer), "optimizer_state")
        tracker.track_existing((w.inputs, w.targets), "batch")
        rules = CudaAutocastRules() if target == "cuda" and dtype != "fp32" else contextlib.nullcontext()
        with rules, checkpointed_layers(model, checkpoint_every), tracker, tracker.saved_tensors_hooks():
            if mode == "forward" and grad:
                with tracker.phase("forward"), w.autocast():
                    kept.append(w.model(w.inputs))
            else:
                w.step(tracker.phase)
        tracker.classify(gradients=[p.grad for p in model.parameters() if p.grad is not None],
                         optimizer_state=_state_tensors(optimizer) if optimizer is not None else ())
        tracker.close()
        est = _summarise(tracker, tracker.replay())
        kept.clear()
        model.zero_grad(set_to_none=True)
        torch.clear_autocast_cache()
    est.config = {"size": cfg.name, "batch": batch, "ctx": ctx, "mode": mode, "dtype": dtype,
                  "step": step if mode == "train" else None, "grad": grad if mode == "forward" else None,
                  "target": target, "checkpoint_every": checkpoint_every}
    est.seconds = time.perf_counter() - t0
    est.built_on, est.fallback = ("fake", fm.fallback) if fm.fallback else ("meta", None)
    return est


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]


def _summarise(tracker: StorageTracker, rp: Replay) -> MemoryEstimate:
    total = rp.total
    peak_row = int(np.argmax(total))
    phase_peaks = {}
    for name, first, last in rp.phase_spans:
        if last >= first:
            phase_peaks[name] = int(total[first:last + 1].max())
    peak_phase = next((n for n, a, b in rp.phase_spans if a <= peak_row <= b), None)
    return MemoryEstimate(
        peak_bytes=int(total[peak_row]),
        breakdown={c: int(rp.by_category[peak_row, i]) for i, c in enumerate(CATEGORIES)},
        weight_copies_bytes=int(rp.weight_copies[peak_row]),
        initial_bytes=int(total[0]), final_bytes=int(total[-1]),
        peak_event=peak_row, events=len(total) - 1, ops=tracker.ops, peak_phase=peak_phase,
        phase_peaks=phase_peaks,
        phase_spans=[{"name": n, "start": a, "end": b} for n, a, b in rp.phase_spans],
        timeline=_timeline(rp), top_allocations=_top_at(tracker, peak_row))


def _timeline(rp: Replay, points: int = TIMELINE_POINTS) -> dict:
    """One point per bucket of events, taken where the bucket's total is highest."""
    total = rp.total
    n = len(total)
    if n <= points:
        rows = np.arange(n)
    else:
        edges = np.unique(np.linspace(0, n, points + 1, dtype=np.int64))
        rows = np.array([a + int(np.argmax(total[a:b])) for a, b in zip(edges[:-1], edges[1:]) if b > a])
    out = {"x": rows.tolist(), "x_unit": "event"}
    for i, c in enumerate(CATEGORIES):
        out[c] = rp.by_category[rows, i].tolist()
    out["weight_copies"] = rp.weight_copies[rows].tolist()
    return out


def _top_at(tracker: StorageTracker, row: int, top: int = TOP) -> list[dict]:
    groups: dict[tuple, int] = {}
    for s in tracker.live_at(row):
        key = (s.nbytes, s.source, s.category, s.op)
        groups[key] = groups.get(key, 0) + 1
    ranked = sorted(groups.items(), key=lambda kv: (-kv[0][0], -kv[1]))[:top]
    return [{"size_bytes": n, "source": src, "category": cat, "op": op, "count": c}
            for (n, src, cat, op), c in ranked]
