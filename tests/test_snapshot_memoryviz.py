"""An independent replay: a line-by-line port of PyTorch's viewer (torch/utils/viz/MemoryViz.js,
`annotate_snapshot` and `process_alloc_data`), used by the other snapshot tests as the
reference lmreport's replay must agree with. Deliberately naive (a set and a running sum),
sharing no code with lmreport.ingest.snapshot_replay."""

from __future__ import annotations

from lmreport.ingest.snapshot_replay import replay_device
from lmreport.ingest.snapshot_format import normalize


def _annotated_trace(trace: list[dict]) -> list[dict]:
    """annotate_snapshot: a free_requested directly followed by its free_completed becomes one 'free'."""
    out: list[dict] = []
    for t in trace:
        if (t["action"] == "free_completed" and out and out[-1]["action"] == "free_requested"
                and out[-1]["addr"] == t["addr"]):
            out[-1] = {**out[-1], "action": "free"}
            continue
        out.append(t)
    return out


def viewer_max_size(snapshot, device: int = 0, plot_segments: bool = False) -> int:
    """max_size of process_alloc_data (Active Memory Timeline, or Active Cached Memory Timeline)."""
    if isinstance(snapshot, list):  # memory_snapshot(): segments only
        snapshot = {"segments": snapshot, "device_traces": []}
    traces = snapshot.get("device_traces", [])
    trace = _annotated_trace(traces[device]) if device < len(traces) else []
    alloc = "segment_alloc" if plot_segments else "alloc"
    frees = ("segment_free",) if plot_segments else ("free", "free_completed")
    elements, initially, actions, addr_to_alloc = [], [], [], {}
    for e in trace:
        if e["action"] == alloc:
            elements.append(e)
            addr_to_alloc[e["addr"]] = len(elements) - 1
            actions.append(len(elements) - 1)
        elif e["action"] in frees:
            if e["addr"] in addr_to_alloc:
                actions.append(addr_to_alloc.pop(e["addr"]))
            else:
                elements.append(e)
                initially.append(len(elements) - 1)
                actions.append(len(elements) - 1)
    for seg in snapshot["segments"]:
        if seg.get("device", 0) != device:
            continue
        if plot_segments:
            if seg["address"] not in addr_to_alloc:
                elements.append({"size": seg["total_size"]})
                initially.append(len(elements) - 1)
            continue
        addr = seg["address"]
        for b in seg["blocks"]:
            if "frames" in b:
                requested = b["requested_size"]
            elif "history" in b:
                requested = b.get("requested_size") or b["history"][0]["real_size"]
            else:
                requested = b.get("requested_size") or b["size"]
            if b["state"] == "active_allocated" and addr not in addr_to_alloc:
                elements.append({"size": requested})
                initially.append(len(elements) - 1)
            addr += b["size"]
    if not actions and initially:
        actions.append(initially.pop())
    current = set(initially)
    total = sum(elements[i]["size"] for i in initially)
    max_size = 0
    for a in actions:
        if a in current:
            current.remove(a)
            total -= elements[a]["size"]
        else:
            current.add(a)
            total += elements[a]["size"]
        max_size = max(max_size, total)
    return max_size


def test_port_on_a_hand_made_snapshot():
    """8 bytes alive before recording (one freed in the trace, one still alive), then 100 + 50."""
    snap = {
        "segments": [{"device": 0, "address": 1000, "total_size": 4096, "blocks": [
            {"address": 1000, "size": 512, "requested_size": 5, "state": "active_allocated", "frames": []},
            {"address": 1512, "size": 512, "requested_size": 100, "state": "active_allocated", "frames": []},
            {"address": 2024, "size": 2072, "requested_size": 0, "state": "inactive", "frames": []}]}],
        "device_traces": [[
            {"action": "free_requested", "addr": 3000, "size": 3},
            {"action": "free_completed", "addr": 3000, "size": 3},
            {"action": "alloc", "addr": 1512, "size": 100},
            {"action": "alloc", "addr": 4000, "size": 50},
            {"action": "free_requested", "addr": 4000, "size": 50},
            {"action": "free_completed", "addr": 4000, "size": 50},
        ]],
    }
    # before: 3 + 5 = 8; after the free 5; +100 -> 105; +50 -> 155; -50 -> 105
    assert viewer_max_size(snap) == 155
    r = replay_device(normalize(snap, "hand"), 0)
    assert (r.initial_active_bytes, r.peak_active_bytes, r.final_active_bytes) == (8, 155, 105)
    assert r.peak_event == 3
    assert viewer_max_size(snap, plot_segments=True) == 4096 == r.peak_reserved_bytes
