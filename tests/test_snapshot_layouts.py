"""Every snapshot layout, built synthetically in torch's format: the replay finds the true
peaks (memory allocated before recording included), agrees with the port of PyTorch's viewer,
and `inspect snapshot --json` prints exactly the documented shape."""

from __future__ import annotations

import json
import pickle

import pytest

from lmreport.cli import main
from lmreport.ingest import snapshot as snapshot_mod
from lmreport.ingest.snapshot_format import normalize
from lmreport.ingest.snapshot_replay import replay_device
from lmreport.ingest.snapshot_synthetic import synthetic_snapshot
from test_snapshot_memoryviz import viewer_max_size

LAYOUTS = {
    "newest dict (time_us, annotations, settings, compile_context, user_metadata)": dict(),
    "older dict: only segments and device_traces, legacy blocks": dict(layout="old"),
    "bare list of segments (memory_snapshot())": dict(layout="segments"),
    "several devices": dict(devices=3),
    "expandable segments (segment_map/unmap)": dict(expandable=True),
    "history not recorded (empty traces)": dict(history=False),
    "an oom entry": dict(oom=True),
}


def _write(tmp_path, obj, name="s.pickle"):
    f = tmp_path / name
    f.write_bytes(pickle.dumps(obj))
    return f


@pytest.mark.parametrize("kw", list(LAYOUTS.values()), ids=list(LAYOUTS))
def test_replay_finds_true_peaks_and_agrees_with_the_viewer(kw):
    obj, truth = synthetic_snapshot(events=1500, seed=3, **kw)
    snap = normalize(obj, "synthetic")
    assert snap.format == ("segments" if kw.get("layout") == "segments" else "snapshot")
    assert snap.devices() == list(range(kw.get("devices", 1)))
    for d in snap.devices():
        r = replay_device(snap, d)
        assert r.initial_active_bytes == truth.initial_active[d] > 0  # memory from before recording
        assert r.peak_active_bytes == truth.peak_active[d]
        assert r.final_active_bytes == truth.final_active[d]
        assert r.peak_reserved_bytes == truth.peak_reserved[d]
        assert r.events == truth.events[d]
        assert r.peak_active_bytes == viewer_max_size(obj, d)
        if not kw.get("expandable") and not isinstance(obj, list):
            assert r.peak_reserved_bytes == viewer_max_size(obj, d, plot_segments=True)


def test_every_action_is_understood():
    obj, truth = synthetic_snapshot(events=3000, seed=1, oom=True)
    r = replay_device(normalize(obj, "x"), 0)
    assert set(r.actions) == {"alloc", "free_requested", "free_completed", "segment_alloc", "segment_free",
                              "snapshot", "oom"}
    assert r.ooms and r.ooms[0]["size_bytes"] == 80 * 1024**3
    obj, _ = synthetic_snapshot(events=2000, seed=1, expandable=True)
    r = replay_device(normalize(obj, "x"), 0)
    assert {"segment_map", "segment_unmap"} <= set(r.actions)


def test_inspect_json_has_the_exact_shape(tmp_path, capsys):
    obj, truth = synthetic_snapshot(events=1200, seed=5, devices=2)
    f = _write(tmp_path, obj)
    assert main(["inspect", "snapshot", "--json", str(f)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"file", "format", "devices"} and out["format"] == "snapshot" and out["file"] == str(f)
    assert [d["device"] for d in out["devices"]] == [0, 1]
    for d in out["devices"]:
        assert set(d) == {"device", "events", "peak_active_bytes", "peak_reserved_bytes", "top_allocations"}
        assert d["peak_active_bytes"] == truth.peak_active[d["device"]]
        assert d["events"] == truth.events[d["device"]]
        assert all(set(a) == {"size_bytes", "frame"} for a in d["top_allocations"])
        size, frame = truth.largest[d["device"]]
        assert d["top_allocations"][0] == {"size_bytes": size, "frame": frame}  # the model line, not einops/torch
        sizes = [a["size_bytes"] for a in d["top_allocations"]]
        assert sizes == sorted(sizes, reverse=True)


def test_backward_allocations_name_their_autograd_node():
    obj, _ = synthetic_snapshot(events=1500, seed=2)
    r = replay_device(normalize(obj, "x"), 0, top=40)
    frames = {a.frame for a in r.top_allocations}
    assert "??:0:torch::autograd::generated::MmBackward0::apply" in frames
    assert not any(f and ("site-packages" in f or "module.py" in f) for f in frames)


def test_text_summary_and_old_layout(tmp_path, capsys):
    obj, truth = synthetic_snapshot(events=800, layout="old", seed=4)
    f = _write(tmp_path, obj)
    assert main(["inspect", "snapshot", str(f)]) == 0
    out = capsys.readouterr().out
    assert "dict snapshot (segments, device_traces)" in out and "allocated before recording" in out
    assert f"{truth.peak_active[0] / 1024**3:,.2f} GiB" in out


def test_segments_only_and_empty_history(tmp_path, capsys):
    obj, truth = synthetic_snapshot(layout="segments", seed=6)
    s = snapshot_mod.summarize(_write(tmp_path, obj))
    d = s.devices[0]
    assert d.events == 0 and d.peak_active_bytes == d.final_active_bytes == truth.final_active[0]
    assert "no history" in snapshot_mod.format_summary(snapshot_mod.inspect_file(_write(tmp_path, obj)))
    empty = _write(tmp_path, {"segments": [], "device_traces": [[]]}, "empty.pickle")
    assert snapshot_mod.inspect_file(empty)["devices"] == []


def test_annotations_become_phases():
    obj, _ = synthetic_snapshot(events=1000, seed=7)
    r = replay_device(normalize(obj, "x"), 0)
    assert [p.name for p in r.phases] == ["Optimizer.step#AdamW.step"]
    assert r.timeline["x_unit"] == "ms" and len(r.timeline["x"]) == len(r.timeline["active_bytes"])
    assert max(r.timeline["active_bytes"]) == r.peak_active_bytes  # the envelope keeps the peak


def test_html_viewer_is_torchs_own_and_needs_no_cuda(tmp_path):
    obj, _ = synthetic_snapshot(events=300, seed=8)
    snap = normalize(obj, "x")
    path, note = snapshot_mod.write_viewer(snap, obj, tmp_path / "viz.html")
    html = path.read_text()
    assert "MemoryViz.js" in html and "snapshot.pickle" in html and "cdn.jsdelivr.net" in note
    none, why = snapshot_mod.write_viewer(normalize([], "x"), [], tmp_path / "none.html")
    assert none is None and "no allocator history" in why


def test_text_summary_names_phases_with_signed_times(tmp_path):
    obj, _ = synthetic_snapshot(events=1000, seed=7)
    obj["external_annotations"].insert(0, {"stage": "START", "name": "zero_grad", "device": 0,
                                           "time_us": obj["device_traces"][0][0]["time_us"] - 700})
    obj["external_annotations"].insert(1, {"stage": "END", "name": "zero_grad", "device": 0,
                                           "time_us": obj["device_traces"][0][0]["time_us"] - 500})
    text = snapshot_mod.format_summary(snapshot_mod.inspect_file(_write(tmp_path, obj)))
    assert "phases (ms after the first entry): zero_grad from -0.7 to -0.5; Optimizer.step#AdamW.step from" in text
