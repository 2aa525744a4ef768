"""A storage tracker: the allocator's view of one step, seen from the dispatcher.

Every aten op passes through `__torch_dispatch__`; each tensor it returns either shares a
storage already alive (a view, an in-place result) or brings a new one: that is one
allocation of `storage.nbytes()` bytes. A weak reference on the storage object fires when
autograd, the optimizer or Python drop the last reference: that is the free. The result is
the same alloc/free sequence the CUDA caching allocator records in a memory snapshot, in
requested bytes, and it works on fake tensors (torch._subclasses.FakeTensorMode), where no
byte is allocated, so a 2.7B-parameter training step can be replayed on a laptop.

Storages are keyed by `untyped_storage()._cdata` (the StorageImpl address: on fake and meta
tensors data_ptr() is 0 for all). Torch keeps one Python object per live storage (PyObject
preservation), so the weak reference dies with the storage itself, not with a wrapper.

Categories (what the memory is for) are decided after the step, when it is known which
storages ended up as `.grad` or optimizer state: parameters and optimizer state registered
before the step keep their category; a storage that is a parameter's `.grad` at the end is
a gradient; one autograd saved for backward during the forward pass (saved_tensors_hooks)
is an activation; autocast's low-precision copies of weights are temporaries (counted
separately as `weight_copies`); everything else (transient results, gradients of
activations, the optimizer's scratch) is a temporary.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations", "temporaries")
_PACKAGE = str(Path(__file__).resolve().parent.parent)  # lmreport/
_SELF = str(Path(__file__).resolve().parent)  # lmreport/estimate/
SOURCE_MIN_BYTES = 1 << 20  # the Python line that asked is looked up for allocations this large


@dataclass
class TrackedStorage:
    id: int
    nbytes: int
    op: str  # aten op that created it ("" for tensors registered before the step)
    phase: str | None  # phase running when it was created
    source: str | None = None  # "model.py:57:scaled_dot_product_attention" or "autograd:MmBackward0"
    category: str | None = None
    saved: bool = False  # saved for backward by autograd
    weight_copy: bool = False  # autocast's cast of a parameter


@dataclass
class Replay:
    """Memory over the step's events, by category (row 0 = before the first event)."""

    by_category: np.ndarray  # (events + 1, len(CATEGORIES)) bytes
    weight_copies: np.ndarray  # (events + 1,) bytes of autocast weight copies alive
    phase_spans: list[tuple[str, int, int]]  # (name, first row, last row) in by_category rows

    @property
    def total(self) -> np.ndarray:
        return self.by_category.sum(axis=1)


class StorageTracker(TorchDispatchMode):
    def __init__(self, source_min_bytes: int = SOURCE_MIN_BYTES):
        super().__init__()
        self.source_min_bytes = source_min_bytes
        self.storages: list[TrackedStorage] = []
        self.events = array("q")  # +(id+1): allocation, -(id+1): free
        self.phase_spans: list[tuple[str, int, int]] = []  # (name, first event, end event)
        self.ops = 0
        self._live: dict[int, int] = {}  # storage key -> id
        self._refs: dict[weakref.ref, tuple[int, int]] = {}  # weak ref -> (id, key)
        self._param_keys: set[int] = set()
        self._phase: str | None = None
        self._open = True

    # --- registration -----------------------------------------------------------------------

    def _register(self, t: torch.Tensor, op: str, category: str | None = None) -> TrackedStorage | None:
        st = t.untyped_storage()
        key = st._cdata
        if key in self._live:
            return None
        s = TrackedStorage(len(self.storages), st.nbytes(), op, self._phase, category=category)
        if not category and s.nbytes >= self.source_min_bytes:
            s.source = _source()
        self.storages.append(s)
        self._live[key] = s.id
        self._refs[weakref.ref(st, self._on_free)] = (s.id, key)
        if category is None:
            self.events.append(s.id + 1)
        return s

    def track_existing(self, tensors, category: str) -> None:
        """Storages alive before the step: "parameters", "optimizer_state", or "batch" (the token
        ids, an activation when autograd saves them, else a temporary)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._register(t, "", category)
                if category == "parameters":
                    self._param_keys.add(t.untyped_storage()._cdata)

    def _on_free(self, ref: weakref.ref) -> None:
        sid, key = self._refs.pop(ref, (None, None))
        if sid is None:
            return
        if self._live.get(key) == sid:
            del self._live[key]
        if self._open:
            self.events.append(-(sid + 1))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        flat = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if flat:
            name = str(func)
            copy_of_param = (func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor)
                             and args[0].untyped_storage()._cdata in self._param_keys)
            for t in flat:
                s = self._register(t, name)
                if s is not None and copy_of_param:
                    s.weight_copy = True
        return out

    # --- what the step does -----------------------------------------------------------------

    @contextlib.contextmanager
    def phase(self, name: str):
        """The `phase` argument of Workload.step: marks which events belong to which phase."""
        prev, self._phase = self._phase, name
        start = len(self.events)
        try:
            yield
        finally:
            self._phase = prev
            self.phase_spans.append((name, start, len(self.events)))

    def saved_tensors_hooks(self):
        """Marks the storages autograd saves for backward (they are activations)."""
        def pack(t: torch.Tensor):
            sid = self._live.get(t.untyped_storage()._cdata)
            if sid is not None and self.storages[sid].category in (None, "batch"):
                self.storages[sid].saved = True
            return t
        return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    def classify(self, gradients=(), optimizer_state=()) -> None:
        """Call right after the step, while grads and optimizer state are alive."""
        for category, tensors in (("gradients", gradients), ("optimizer_state", optimizer_state)):
            for t in tensors:
                sid = self._live.get(t.untyped_storage()._cdata) if isinstance(t, torch.Tensor) else None
                if sid is not None and self.storages[sid].category is None:
                    self.storages[sid].category = category
        for s in self.storages:
            if s.category == "batch":  # the token ids: saved by the embedding's backward in training
                s.category = "activations" if s.saved else "temporaries"
            if s.category is None:
                s.category = ("temporaries" if s.weight_copy else
                              "activations" if s.saved and s.phase == "forward" else "temporaries")

    def close(self) -> None:
        """Stop logging frees (what dies after the step is not part of it)."""
        self._open = False

    # --- replay -------------------------------------------------------------------------------

    def replay(self) -> Replay:
        cat_index = {c: i for i, c in enumerate(CATEGORIES)}
        row = [0] * len(CATEGORIES)
        wc = 0
        pre = [s for s in self.storages if s.op == ""]
        for s in pre:
            row[cat_index[s.category]] += s.nbytes
        rows, wcs = [list(row)], [0]
        for ev in self.events:
            s = self.storages[abs(ev) - 1]
            sign = 1 if ev > 0 else -1
            row[cat_index[s.category]] += sign * s.nbytes
            if s.weight_copy:
                wc += sign * s.nbytes
            rows.append(list(row))
            wcs.append(wc)
        spans = [(name, start + 1, end) for name, start, end in self.phase_spans]
        return Replay(np.array(rows, dtype=np.int64), np.array(wcs, dtype=np.int64), spans)

    def live_at(self, event: int) -> list[TrackedStorage]:
        """Storages alive after `event` events (0 = before the first)."""
        alive = {s.id for s in self.storages if s.op == ""}
        for ev in self.events[:event]:
            (alive.add if ev > 0 else alive.discard)(abs(ev) - 1)
        return [self.storages[i] for i in sorted(alive)]


def _source() -> str | None:
    """Where an allocation comes from: the backward node running it, else the lmreport line."""
    node = torch._C._current_autograd_node()
    if node is not None:
        return f"autograd:{type(node).__name__}"
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if fn.startswith(_PACKAGE) and not fn.startswith(_SELF):
            return f"{Path(fn).name}:{f.f_lineno}:{f.f_code.co_name}"
        f = f.f_back
    return None
