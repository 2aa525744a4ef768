"""Bytes really saved for backward, on any device (meta included).

Two views of the same thing:
- `measure_saved_bytes` packs every tensor autograd saves (torch.autograd.graph.saved_tensors_hooks)
  and sums the distinct storages: the number to compare with an activation formula.
- `saved_by_node` walks the autograd graph after the forward pass and attributes each saved
  storage to the backward node that holds it (MmBackward0, SoftmaxBackward0, ...): the
  explanation of that number. Tests check both totals agree.

Storages are deduplicated by `untyped_storage()._cdata` because on `meta` every data_ptr()
is 0, and a view saved by two nodes costs its storage once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _storage_bytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


@dataclass
class SavedBytes:
    """Distinct storages saved for backward, split into parameters and everything else."""

    activation_bytes: int = 0
    parameter_bytes: int = 0
    storages: int = 0

    @property
    def total_bytes(self) -> int:
        return self.activation_bytes + self.parameter_bytes


def measure_saved_bytes(fn: Callable[[], object], parameters: Iterable[torch.Tensor] = ()) -> tuple[object, SavedBytes]:
    """Run fn() with a pack hook; return its output and the bytes of distinct saved storages."""
    param_keys = {_storage_key(p) for p in parameters}
    seen: set[int] = set()
    result = SavedBytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in seen:
            seen.add(key)
            result.storages += 1
            if key in param_keys:
                result.parameter_bytes += _storage_bytes(t)
            else:
                result.activation_bytes += _storage_bytes(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, result


@dataclass
class NodeSaved:
    """Saved storages attributed to backward nodes (first holder wins a shared storage)."""

    bytes_by_node: Counter = field(default_factory=Counter)  # "SoftmaxBackward0" -> bytes
    parameter_bytes: int = 0

    @property
    def activation_bytes(self) -> int:
        return sum(self.bytes_by_node.values())


def _saved_tensors_of(node) -> Iterable[tuple[str, torch.Tensor]]:
    for attr in dir(node):
        if not attr.startswith("_saved_"):
            continue
        try:
            value = getattr(node, attr)
        except RuntimeError:  # already freed
            continue
        values = value if isinstance(value, (tuple, list)) else (value,)
        yield from ((attr, v) for v in values if isinstance(v, torch.Tensor))


def saved_by_node(output: torch.Tensor, parameters: Iterable[torch.Tensor] = ()) -> NodeSaved:
    """Walk output's autograd graph; attribute each distinct saved storage to one node type.

    A storage held by several nodes (softmax's output is saved by SoftmaxBackward and by the
    matmul that consumes it) goes to the node that saved it as its own `result`, else to the
    first node reached from the output.
    """
    param_keys = {_storage_key(p) for p in parameters}
    owner: dict[int, tuple[str, int, bool]] = {}  # storage -> (node type, bytes, is own result)
    stack, visited = [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        for attr, t in _saved_tensors_of(node):
            key = _storage_key(t)
            own = attr == "_saved_result"
            if key not in owner or (own and not owner[key][2]):
                owner[key] = (type(node).__name__, _storage_bytes(t), own)
        stack.extend(fn for fn, _ in node.next_functions)
    out = NodeSaved()
    for key, (name, nbytes, _) in owner.items():
        if key in param_keys:
            out.parameter_bytes += nbytes
        else:
            out.bytes_by_node[name] += nbytes
    return out
