"""Rendering: records -> Markdown -> PDF, numbers read back from the PDF itself."""

from __future__ import annotations

import importlib
import json
import sys
import types
import unicodedata
from pathlib import Path

import pytest
from pypdf import PdfReader

from lmreport import runner
from lmreport.presets import resolve
from lmreport.report import render as render_mod
from lmreport.sections import Section

PROFILE, ED25 = resolve("cpu", 2025, False)


@pytest.fixture(scope="module")
def accounting_runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    plan = runner.Plan(PROFILE, ED25)
    from lmreport.experiments import accounting
    runner.run_sweep(accounting.cells(plan), runs, plan.run, progress=False)
    return runs


@pytest.fixture(scope="module")
def rendered(accounting_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    return render_mod.render(accounting_runs, out, ED25, PROFILE, pdf=True)


def pdf_text(path) -> str:
    """Text of the PDF, NFKC-normalised, whitespace collapsed, typographic quotes made plain."""
    reader = PdfReader(path)
    text = unicodedata.normalize("NFKC", "\n".join(p.extract_text() for p in reader.pages))
    return " ".join(text.replace("\u2019", "'").split())


def test_pdf_contains_the_key_answers(rendered):
    text = pdf_text(rendered.pdf)
    for expected in ("2,127,057,600", "4,513,336,524,800", "3,406,809,600", "20,971,520", "20.00 MiB"):
        assert expected in text, expected
    assert "Contents" in text  # table of contents
    assert "Every parameter and FLOP formula equals PyTorch's count exactly" in text


def test_pdf_metadata_and_attached_records(rendered):
    reader = PdfReader(rendered.pdf)
    assert reader.metadata.title == "Transformer systems study: the writeup"
    assert "Profile: cpu" in reader.metadata["/Keywords"]
    attached = json.loads(reader.attachments["records.json"][0])
    assert len(attached) == len(rendered.records) > 0
    assert {r["section"] for r in attached} == {"accounting"}


def test_markdown_has_title_facts_and_math(rendered):
    md = rendered.markdown.read_text()
    assert md.startswith("---\ntitle:")
    assert "$$P = d \\left(L" in md
    assert "| GPT-2 XL | 1 | 1,024 | 2,127,057,600 | 2,127,057,600 |" in md


def test_formulas_render_without_records(tmp_path):
    out = render_mod.render(tmp_path / "empty", tmp_path / "build", ED25, PROFILE, pdf=False)
    md = out.markdown.read_text()
    assert "2,127,057,600" in md and "lmreport run accounting --profile cpu --edition 2025" in md


def test_2026_edition_numbers(tmp_path):
    _, ed26 = resolve("cpu", 2026, False)
    md = render_mod.render(tmp_path / "empty", tmp_path / "b", ed26, PROFILE, pdf=False).markdown.read_text()
    assert "1,640,452,800" in md  # GPT-2 XL with d_ff 4,288
    assert "hours" in md and "H100" in md
    assert "5.00 MiB" in md and "80.00 MiB" in md  # residual stream at contexts 128 and 2048


def test_a_section_without_records_renders_a_note(tmp_path, monkeypatch):
    mod = types.ModuleType("lmreport_fake_report")

    def build(view):
        view.require_records()

    mod.build = build
    monkeypatch.setitem(sys.modules, "lmreport_fake_report", mod)
    fake = Section("fakesec", "A fake section", 99, "nowhere", "lmreport_fake_report")
    sections = {**render_mod.all_sections(), "fakesec": fake}
    monkeypatch.setattr(render_mod, "all_sections", lambda: sections)
    out = render_mod.render(tmp_path / "runs", tmp_path / "build", ED25, PROFILE, pdf=False)
    md = out.markdown.read_text()
    assert "# A fake section" in md and "lmreport run fakesec --profile cpu --edition 2025" in md
    assert {s["name"]: s["status"] for s in out.sections}["fakesec"] == "missing"


def test_strict_undefined_fails_loudly():
    env = render_mod.jinja_env()
    with pytest.raises(Exception, match="undefined"):
        env.from_string("{{ nothing.here }}").render()


def test_provenance_names_device_and_flags_mixed_records():
    from lmreport.presets import resolve
    from lmreport.report.context import SectionView
    from lmreport.sections import get
    prof, ed = resolve("cpu", 2025, False)
    recs = [{"environment": {"device": "NVIDIA A100", "host": "a"}}, {"environment": {"device": "NVIDIA H100", "host": "b"}}]
    view = SectionView(get("accounting"), recs, ed, prof, "2025-cpu", Path("figs"))
    p = view.provenance()
    assert p["mixed"] and "Mixed devices" in p["line"] and "NVIDIA A100; NVIDIA H100" in p["line"] and "profile cpu" in p["line"]
    assert not view.provenance(recs[:1])["mixed"] and view.provenance([])["line"].startswith("Formulas only")
    # a record whose device is not known (a worker that died first) makes no table mixed
    died = {"environment": {"device": None, "host": "a"}}
    assert view.provenance([recs[0], died])["devices"] == ["NVIDIA A100"] and not view.provenance([recs[0], died])["mixed"]
    assert view.provenance([died])["line"].startswith("Device: unknown · host a")


def test_a_crashing_section_costs_only_its_own_chapter(tmp_path, monkeypatch, capsys):
    """A bug in one section's build() or template: the writeup still renders, the chapter says so, exit 1."""
    from lmreport.cli import main
    from lmreport.sections import get
    broken = types.SimpleNamespace(build=lambda view: 1 / 0)
    sec = get("precision")
    monkeypatch.setattr(type(sec), "report_module", lambda self: broken if self.name == "precision"
                        else importlib.import_module(self.report))
    code = main(["render", "--profile", "cpu", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "b"),
                 "--no-pdf"])
    md = (tmp_path / "b" / "writeup.md").read_text()
    assert code == 1
    assert "could not be rendered:** `ZeroDivisionError: division by zero`" in md
    assert "2,127,057,600" in md  # the accounting chapter is intact
    err = capsys.readouterr().err
    assert "lmreport: warning: section precision: building failed (ZeroDivisionError" in err
    assert "FAILED to render: precision" in err and "Traceback" not in err


def test_render_names_records_of_other_profiles_it_leaves_out(tmp_path, capsys):
    from lmreport import store
    from lmreport.cli import main
    runs = tmp_path / "runs"
    for i, (year, prof) in enumerate([(2025, "handout-2025"), (2025, "handout-2025"), (2026, "cpu")]):
        store.write_record(runs / "copied" / f"r{i}.json",
                           store.make_record("bench", f"c{i}", {"edition": year, "profile": prof}, {}, "ok"))
    code = main(["render", "--profile", "cpu", "--edition", "2025", "--runs-dir", str(runs),
                 "--out", str(tmp_path / "b"), "--no-pdf"])
    err = capsys.readouterr().err
    assert code == 0
    assert "2 records of profile handout-2025, edition 2025 (render them with `lmreport render --profile handout-2025`)" in err
    assert "1 record of profile cpu, edition 2026 (render them with `lmreport render --profile cpu --edition 2026`)" in err
