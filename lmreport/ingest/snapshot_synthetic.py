"""Synthetic CUDA memory snapshots in torch's own format, with their true peaks (tests, benchmarks).

A tiny caching-allocator simulation writes what torch.cuda.memory._snapshot() writes: trace
entries per device (alloc, free_requested, free_completed, segment_alloc/free or, with
expandable segments, segment_map/unmap, snapshot, oom) and the final segments with their
blocks. Because the simulation knows every live byte at every moment, including memory
allocated before "recording" began, it returns the ground truth the replay must find.

Frames look like real ones (see the samples in ../shared/samples/memory): native C++ frames
first (torch::unwind, the caching allocator, the dispatcher), then Python frames of model
code, torch/nn/modules/module.py and a training script, then CPython internals. As in real
files, frame dicts are shared objects (pickle memoises them), each entry has its own list.

Layouts (`layout`): "dict" (newest: time_us, compile_context, user_metadata,
allocator_settings, external_annotations), "old" (only segments and device_traces, no time,
no frames on entries, blocks without address and with the legacy history record),
"segments" (the bare list of memory_snapshot(), no history).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

MiB = 1 << 20
SMALL_SEGMENT = 2 * MiB  # torch's small pool segment size (kSmallBuffer)
ROUND = 512  # kMinBlockSize: block sizes are multiples of 512 bytes

_NATIVE = [
    ("torch::unwind::unwind()", "??"),
    ("torch::CapturedTraceback::gather(bool, bool, bool)", "??"),
    ("torch::cuda::(anonymous namespace)::gather_with_cpp()", "memory_snapshot.cpp"),
    ("c10::cuda::CUDACachingAllocator::Native::DeviceCachingAllocator::malloc(signed char, unsigned long, CUstream_st*)",
     "CUDACachingAllocator.cpp"),
    ("c10::cuda::CUDACachingAllocator::Native::NativeCachingAllocator::malloc(void**, signed char, unsigned long, CUstream_st*)", ""),
    ("at::detail::empty_cuda(c10::ArrayRef<long>, c10::TensorOptions const&)", "??"),
    ("at::(anonymous namespace)::wrapper_CUDA_mm(at::Tensor const&, at::Tensor const&)", "RegisterCUDA.cpp"),
    ("at::_ops::mm::call(at::Tensor const&, at::Tensor const&)", "??"),
]
_BACKWARD = [("torch::autograd::generated::MmBackward0::apply(std::vector<at::Tensor, std::allocator<at::Tensor> >&&)", "??"),
             ("torch::autograd::Engine::evaluate_function(...)", "??"),
             ("torch::autograd::Engine::thread_main(std::shared_ptr<torch::autograd::GraphTask> const&)", "??")]
_CPYTHON = [("_PyEval_EvalFrameDefault", "??"), ("PyObject_Call", "??"), ("_start", "??"), ("__libc_start_main", "??")]
USER_FILE = "/home/user/project/model.py"
SCRIPT = "/home/user/project/train.py"


@dataclass
class Truth:
    """What the simulation knows: per device, the true peak and the memory before recording."""

    peak_active: dict[int, int] = field(default_factory=dict)
    peak_reserved: dict[int, int] = field(default_factory=dict)
    initial_active: dict[int, int] = field(default_factory=dict)
    final_active: dict[int, int] = field(default_factory=dict)
    events: dict[int, int] = field(default_factory=dict)
    largest: dict[int, tuple[int, str]] = field(default_factory=dict)  # size, expected frame of the largest alloc


class _Frames:
    def __init__(self, rng: random.Random, lines: int = 120):
        self.native = [{"name": n, "filename": f, "line": 0} for n, f in _NATIVE]
        self.backward = [{"name": n, "filename": f, "line": 0} for n, f in _BACKWARD]
        self.cpython = [{"name": n, "filename": f, "line": 0} for n, f in _CPYTHON]
        self.torch = [{"name": "_call_impl", "filename": "/venv/lib/python3.11/site-packages/torch/nn/modules/module.py",
                       "line": 1750},
                      {"name": "_wrapped_call_impl", "filename": "/venv/lib/python3.11/site-packages/torch/nn/modules/module.py",
                       "line": 1739}]
        self.lib = {"name": "einsum", "filename": "/venv/lib/python3.11/site-packages/einops/_backends.py", "line": 288}
        self.user = [{"name": "forward", "filename": USER_FILE, "line": 10 + i} for i in range(lines)]
        self.script = {"name": "main", "filename": SCRIPT, "line": 42}
        self.module = {"name": "<module>", "filename": SCRIPT, "line": 99}
        self.rng = rng

    def stack(self, line: int, backward: bool, library: bool) -> tuple[list[dict], str]:
        """(frames, the source frame the resolver must pick)."""
        frames = list(self.native)
        if backward:  # the autograd engine's thread: no Python frame at all
            return frames + self.backward + self.cpython[2:], "??:0:torch::autograd::generated::MmBackward0::apply"
        if library:
            frames.append(self.lib)
        user = self.user[line % len(self.user)]
        for _ in range(6):  # nested modules: model line, CPython, Module._call_impl, ... (~40 frames in all)
            frames += [user, self.cpython[0], *self.torch]
        frames += [self.script, self.cpython[0], self.module, *self.cpython[2:]]
        return frames, f"model.py:{user['line']}:forward"


def _round(n: int) -> int:
    return max(ROUND, (n + ROUND - 1) // ROUND * ROUND)


def synthetic_snapshot(events: int = 2000, devices: int = 1, layout: str = "dict", expandable: bool = False,
                       history: bool = True, seed: int = 0, pre_allocated: int = 8, oom: bool = False,
                       annotations: bool = True) -> tuple[object, Truth]:
    """(the object torch would pickle, the ground truth). `events` counts trace entries per device."""
    rng = random.Random(seed)
    fr = _Frames(rng)
    traces, segments = [], []
    truth = Truth()
    t_us = 1_700_000_000_000_000
    annots = []
    for dev in range(devices):
        base = 0x7F0000000000 + dev * 0x10000000000
        next_addr = [base]
        trace: list[dict] = []
        live: dict[int, tuple[int, list[dict], int]] = {}  # addr -> (size, frames, segment addr)
        segs: dict[int, dict] = {}  # segment addr -> {"size", "blocks": {addr: size}}
        active = reserved = 0

        small_open: list[int] = []  # small-pool segments with room at their cursor
        empty_large: list[int] = []  # cached large segments with no live block (reusable)

        def new_segment(size: int) -> int:
            addr = next_addr[0]
            next_addr[0] += size + 2 * MiB
            segs[addr] = {"size": size, "used": {}, "cursor": addr}
            return addr

        def emit(action: str, addr: int, size: int, frames=None):
            nonlocal t_us
            t_us += rng.randint(1, 40)
            e = {"action": action, "addr": addr, "size": size, "stream": 0}
            if layout == "dict":
                e["time_us"] = t_us
                e["compile_context"] = "N/A"
                e["user_metadata"] = ""
                e["frames"] = frames if frames is not None else []
            trace.append(e)

        def place(size: int) -> tuple[int, int, bool]:
            """(block address, segment address, new segment?): bump allocation in the small pool,
            one segment per large block (a cached empty one when big enough, as the allocator reuses)."""
            if size < MiB:
                for saddr in small_open:
                    sg = segs[saddr]
                    if sg["cursor"] + size <= saddr + sg["size"]:
                        sg["cursor"] += size
                        return sg["cursor"] - size, saddr, False
                saddr = new_segment(SMALL_SEGMENT)
                small_open.append(saddr)
                if len(small_open) > 4:
                    small_open.pop(0)
                segs[saddr]["cursor"] += size
                return saddr, saddr, True
            for i, saddr in enumerate(empty_large):
                if segs[saddr]["size"] >= size:
                    empty_large.pop(i)
                    return saddr, saddr, False
            saddr = new_segment(_round(size) + 2 * MiB * rng.randint(0, 1))
            return saddr, saddr, True

        def allocate(size: int, recorded: bool, frames) -> int:
            nonlocal active, reserved
            size_b = _round(size)
            addr, saddr, fresh = place(size_b)
            if fresh:
                reserved += segs[saddr]["size"]
                if recorded:
                    emit("segment_map" if expandable else "segment_alloc", saddr, segs[saddr]["size"], frames)
            live[addr] = (size, frames, saddr, size_b)
            segs[saddr]["used"][addr] = size_b
            active += size
            if recorded:
                emit("alloc", addr, size, frames)
            return addr

        def free(addr: int):
            nonlocal active, reserved
            size, frames, saddr, size_b = live.pop(addr)
            emit("free_requested", addr, size, frames)
            emit("free_completed", addr, size, frames)
            active -= size
            sg = segs[saddr]
            del sg["used"][addr]
            if sg["used"]:
                return
            if sg["size"] == SMALL_SEGMENT:
                sg["cursor"] = saddr  # empty: the whole segment is free again
                if saddr not in small_open:
                    small_open.append(saddr)
            elif rng.random() < 0.3:  # empty_cache() or a retry after a failed cudaMalloc
                emit("segment_unmap" if expandable else "segment_free", saddr, sg["size"], frames)
                reserved -= sg["size"]
                del segs[saddr]
            else:
                empty_large.append(saddr)

        # memory allocated before recording starts: weights that stay, and some that get freed
        pre = []
        for i in range(pre_allocated):
            frames, _ = fr.stack(i, backward=False, library=False)
            pre.append(allocate(rng.choice([4 * MiB, 40 * MiB, 100 * MiB + 4]), recorded=False, frames=frames))
        initial, peak, peak_res = active, active, reserved
        largest = (0, "")
        if history and layout != "segments":
            frames, source = fr.stack(7, backward=False, library=True)
            allocate(160 * MiB + 4096, True, frames)  # the largest recorded allocation, from a known line
            largest = (160 * MiB + 4096, source)
            peak, peak_res = max(peak, active), max(peak_res, reserved)
            while len(trace) < events - 1:
                if pre and rng.random() < 0.01:
                    addr = pre.pop(rng.randrange(len(pre)))
                    if addr in live:
                        free(addr)
                elif live and (rng.random() < 0.45 or len(live) > 400):
                    free(next(iter(live)) if rng.random() < 0.5 else next(reversed(live)))
                else:
                    size = rng.choice([512, 2048, 65536, 1 * MiB, 3 * MiB, 8 * MiB + 12, 25 * MiB])
                    backward, library = rng.random() < 0.3, rng.random() < 0.2
                    frames, _ = fr.stack(rng.randrange(1000), backward, library)
                    allocate(size, True, frames)
                peak = max(peak, active)
                peak_res = max(peak_res, reserved)
            emit("snapshot", 0, 0)  # a marker entry, as torch writes for snapshot requests
            if oom:
                trace.append({"action": "oom", "addr": 0, "size": 80 * 1024 * MiB, "stream": 0, "device_free": 5 * MiB,
                              **({"time_us": t_us + 1, "frames": []} if layout == "dict" else {})})
            if annotations and layout == "dict":
                mid = trace[len(trace) // 2].get("time_us", t_us)
                annots += [{"stage": "START", "name": "Optimizer.step#AdamW.step", "device": dev, "time_us": mid},
                           {"stage": "END", "name": "Optimizer.step#AdamW.step", "device": dev, "time_us": t_us}]
        traces.append(trace)
        truth.peak_active[dev], truth.peak_reserved[dev] = peak, peak_res
        truth.initial_active[dev], truth.final_active[dev] = initial, active
        truth.events[dev] = len(trace)
        truth.largest[dev] = largest
        for saddr, s in sorted(segs.items()):
            blocks, addr = [], saddr
            for baddr, bsize in sorted(s["used"].items()):
                if baddr > addr:
                    blocks.append(_block(addr, baddr - addr, 0, "inactive", [], layout))
                size, frames, _, _ = live[baddr]
                blocks.append(_block(baddr, bsize, size, "active_allocated", frames, layout))
                addr = baddr + bsize
            if addr < saddr + s["size"]:
                blocks.append(_block(addr, saddr + s["size"] - addr, 0, "inactive", [], layout))
            seg = {"device": dev, "address": saddr, "total_size": s["size"], "stream": 0,
                   "segment_type": "small" if s["size"] == SMALL_SEGMENT else "large", "blocks": blocks}
            if layout != "old":
                used = sum(b["size"] for b in blocks if b["state"] == "active_allocated")
                seg.update({"allocated_size": used, "active_size": used, "requested_size": used,
                            "segment_pool_id": (0, 0), "is_expandable": expandable, "frames": []})
            segments.append(seg)
    if layout == "segments":
        return segments, truth
    if layout == "old":
        return {"segments": segments, "device_traces": traces}, truth
    return {"segments": segments, "device_traces": traces,
            "allocator_settings": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True" if expandable else "",
                                   "expandable_segments": expandable, "max_split_size": -1},
            "external_annotations": annots}, truth


def _block(addr: int, size: int, requested: int, state: str, frames, layout: str) -> dict:
    if layout == "old":  # legacy blocks: no address, requested size and frames in history[0]
        b = {"size": size, "state": state}
        if state == "active_allocated":
            b["history"] = [{"addr": addr, "real_size": requested, "frames": frames}]
        return b
    return {"address": addr, "size": size, "requested_size": requested, "state": state, "frames": frames}
