"""Real CUDA memory snapshots from public repositories (../shared/samples/memory, see SOURCES.md):
inspect reads every one, its peaks agree with the port of PyTorch's viewer, and where the
configuration can be identified from the file itself, the full-size estimate matches the
real peak within 10%."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lmreport import accounting as acc
from lmreport import safe_pickle
from lmreport.cli import main
from lmreport.estimate.memory import estimate_memory
from lmreport.ingest import snapshot as snapshot_mod
from lmreport.ingest.snapshot_format import block_layout, normalize
from lmreport.presets import EDITION_TABLES
from test_snapshot_memoryviz import viewer_max_size

KKAITLYN_FULL = "kkaitlyn111__memory_ctx128_fullstep.pickle"
KKAITLYN_FWD = "kkaitlyn111__memory_ctx128_forward_mixed.pickle"
BCRAFTON = "bcrafton__memory_snapshot.pickle"
MODEL_2_7B = EDITION_TABLES[2025].study_models["2.7B"]


def _samples(samples_dir):
    files = sorted((samples_dir / "memory").glob("*.pickle"))
    assert files, "no snapshot samples"
    return files


def test_inspect_reads_every_sample_and_agrees_with_the_viewer(samples_dir, capsys):
    for f in _samples(samples_dir):
        raw = safe_pickle.load(f)
        result = snapshot_mod.inspect_file(f)
        assert result["format"] == "snapshot"
        for d in result["devices"]:
            assert d["peak_active_bytes"] == viewer_max_size(raw, d["device"]), f.name
            assert d["peak_reserved_bytes"] == viewer_max_size(raw, d["device"], plot_segments=True), f.name
            assert d["events"] == len(raw["device_traces"][d["device"]])
            assert d["top_allocations"] and all(a["size_bytes"] > 0 for a in d["top_allocations"])
        assert main(["inspect", "snapshot", "--json", str(f)]) == 0
        assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(result))


def test_sources_are_the_model_lines(samples_dir):
    full = snapshot_mod.inspect_file(samples_dir / "memory" / KKAITLYN_FULL)["devices"][0]["top_allocations"]
    frames = {a["frame"] for a in full}
    assert "training.py:21:cross_entropy_loss" in frames  # the logits' log-softmax, from the user's code
    assert "optimizers.py:82:step" in frames  # AdamW's m, allocated in the first step
    assert "??:0:torch::autograd::generated::BmmBackward0::apply" in frames  # backward: no Python frame
    fwd = snapshot_mod.inspect_file(samples_dir / "memory" / KKAITLYN_FWD)["devices"][0]["top_allocations"]
    assert any(a["frame"] == "transformer.py:22:forward" for a in fwd)  # not einops/_backends.py
    assert not any("site-packages" in (a["frame"] or "") for a in full + fwd)


def _parameter_blocks(f) -> Counter:
    """Requested sizes of the blocks alive before recording started (the model's weights)."""
    snap = normalize(safe_pickle.load(f), f)
    allocated = {e["addr"] for e in snap.trace_of(0) if e["action"] == "alloc"}
    return Counter(req for s in snap.segments_of(0) for addr, _, req, state, _ in block_layout(s)
                   if state == "active_allocated" and addr not in allocated)


def test_kkaitlyn_files_are_the_2_7b_model_at_batch_4(samples_dir):
    """Identify the configuration from the files: weight shapes, parameter bytes, logits."""
    cfg, d, f = MODEL_2_7B, MODEL_2_7B.d_model, MODEL_2_7B.d_ff
    for name in (KKAITLYN_FULL, KKAITLYN_FWD):
        blocks = _parameter_blocks(samples_dir / "memory" / name)
        assert blocks[4 * d * f] == 3 * cfg.num_layers  # W1, W2, W3 of every layer
        assert blocks[4 * d * d] == 4 * cfg.num_layers  # Q, K, V, O
        assert blocks[4 * cfg.vocab_size * d] == 2  # embedding and LM head
        s = snapshot_mod.summarize(samples_dir / "memory" / name).devices[0]
        assert s.initial_active_bytes == pytest.approx(4 * acc.parameter_count(cfg), rel=1e-3)
    raw = safe_pickle.load(samples_dir / "memory" / KKAITLYN_FULL)
    sizes = {e["size"] for e in raw["device_traces"][0] if e["action"] == "alloc"}
    assert 4 * 128 * cfg.vocab_size * 4 in sizes  # fp32 logits of batch 4, context 128


def test_estimates_match_the_real_peaks_within_10_percent(samples_dir):
    # fullstep: fp32, the first step (AdamW's m and v are allocated inside it, optimizers.py:82/84)
    real = snapshot_mod.summarize(samples_dir / "memory" / KKAITLYN_FULL).main.peak_active_bytes
    est = estimate_memory(MODEL_2_7B, 4, 128, "train", "fp32", step="first")
    assert est.peak_bytes == pytest.approx(real, rel=0.10)
    # forward_mixed: bf16 autocast, autograd recording (activations alive at the dump), output kept
    real = snapshot_mod.summarize(samples_dir / "memory" / KKAITLYN_FWD).main.peak_active_bytes
    est = estimate_memory(MODEL_2_7B, 4, 128, "forward", "bf16", grad=True)
    assert est.peak_bytes == pytest.approx(real, rel=0.10)
    assert est.weight_copies_bytes > 0.4 * 4 * acc.parameter_count(MODEL_2_7B) / 2  # autocast's bf16 weight cache


def test_bcrafton_is_not_a_study_configuration(samples_dir):
    """Its largest weights are 50,257 x 768 fp32 (GPT-2 vocabulary): no model of either table."""
    blocks = _parameter_blocks(samples_dir / "memory" / BCRAFTON)
    largest = max(blocks)
    assert largest == 4 * 50_257 * 768
    for ed in EDITION_TABLES.values():
        assert all(4 * m.vocab_size * m.d_model != largest for m in ed.study_models.values())


def test_ingest_a_sample_then_render_side_by_side(samples_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    f = samples_dir / "memory" / KKAITLYN_FULL
    code = main(["ingest", "memory", str(f), "--size", "2.7B", "--ctx", "128", "--mode", "train",
                 "--first-step", "--profile", "cpu", "--runs-dir", str(runs)])
    assert code == 0
    rec_file = runs / "2025-cpu" / "memory" / "measured-2.7B-ctx128-train-fp32-first.json"
    rec = json.loads(rec_file.read_text())
    assert rec["status"] == "ok" and rec["config"]["source"] == "measured" and rec["config"]["step"] == "first"
    assert rec["metrics"]["peak_active_bytes"] == viewer_max_size(safe_pickle.load(f), 0)
    assert (rec_file.with_suffix("") / rec["artifacts"]["viewer"]).exists()
    assert rec["environment"]["device_type"] == "cuda" and rec["environment"]["ingested_from"] == str(f)
