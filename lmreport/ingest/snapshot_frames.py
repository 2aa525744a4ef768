"""Which stack frame says where an allocation comes from (pure Python).

A snapshot frame is {"filename", "line", "name"}; a stack lists the innermost frame first:
torch's C++ unwinder and allocator, the dispatcher, then Python frames out to `<module>`.
The frame a reader wants is the first one outside torch and Python itself: the model line
that asked for the tensor. Installed libraries (site-packages, e.g. einops.einsum) are
skipped when a frame of the user's own code exists further out, and used otherwise.
Allocations made by the autograd engine's thread during backward have no Python frame at
all; for those the backward node (torch::autograd::generated::MmBackward0::apply) names the
operation, so it is reported instead. `format_frame` writes "file:line:function" with the
file's base name, as torch.cuda._memory_viz._frame_fmt does.
"""

from __future__ import annotations

import re

USER, LIBRARY, TORCH, PYTHON, NATIVE = "user", "library", "torch", "python", "native"
_STDLIB = re.compile(r"/lib(?:64)?/python\d+(?:\.\d+)?t?/(?!site-packages/|dist-packages/)")
_AUTOGRAD_NODE = re.compile(r"torch::autograd::generated::(\w+)::apply")


def frame_kind(frame: dict) -> str:
    fn = str(frame.get("filename") or "")
    if not (fn.endswith(".py") or fn.startswith("<")):
        return NATIVE  # C/C++ frames: '??', 'memory_snapshot.cpp', 'thread48.o', ''
    if fn.startswith("<frozen"):
        return PYTHON
    norm = fn.replace("\\", "/")
    if "/torch/" in norm or norm.startswith("torch/") or "/torchinductor_" in norm:
        return TORCH
    if _STDLIB.search(norm):
        return PYTHON
    if "/site-packages/" in norm or "/dist-packages/" in norm:
        return LIBRARY
    return USER


def format_frame(frame: dict) -> str:
    name = frame.get("name")
    name = name if isinstance(name, str) and name else "?"
    if frame_kind(frame) == NATIVE:
        name = name.split("(", 1)[0]  # C++ signatures run to hundreds of characters
    fn = str(frame.get("filename") or "??").replace("\\", "/").rsplit("/", 1)[-1] or "??"
    line = frame.get("line", 0)
    return f"{fn}:{line if isinstance(line, int) else 0}:{name}"


def _is_frame(f) -> bool:
    """A frame as torch writes it: a dict whose filename (if any) is a string (files are untrusted)."""
    return (isinstance(f, dict) and isinstance(f.get("filename") or "", str)
            and isinstance(f.get("name") or "", str))


class FrameResolver:
    """source_frame(frames) with a cache: real snapshots share one dict per distinct frame."""

    def __init__(self):
        self._kind: dict[int, str] = {}
        self._keep: list = []  # keeps cached frame dicts alive so their ids stay unique

    def _kind_of(self, f: dict) -> str:
        k = self._kind.get(id(f))
        if k is None:
            k = self._kind[id(f)] = frame_kind(f)
            self._keep.append(f)
        return k

    def source_frame(self, frames) -> str | None:
        """'file:line:function' of the frame that explains an allocation; None without frames."""
        if not frames or not isinstance(frames, list):
            return None
        library = node = None
        for f in frames:
            if not _is_frame(f):
                continue
            k = self._kind_of(f)
            if k == USER:
                return format_frame(f)
            if k == LIBRARY and library is None:
                library = f
            elif k == NATIVE and node is None and _AUTOGRAD_NODE.search(f.get("name") or ""):
                node = f
        if library is not None:
            return format_frame(library)
        if node is not None:
            return format_frame(node)
        return None


def autograd_node(frame: str | None) -> str | None:
    """'MmBackward0' when a source frame is an autograd node's apply(), else None."""
    m = _AUTOGRAD_NODE.search(frame or "")
    return m.group(1) if m else None
