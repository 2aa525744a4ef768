"""Records -> section contexts -> Jinja templates -> build/writeup.md (+ PDF).

Rendering never runs experiments: it reads records, computes formulas and draws plots.
Templates use StrictUndefined, so a value a template needs but a context lacks fails loudly
instead of printing an empty string.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import jinja2

from lmreport import store, user_model
from lmreport.device import PROJECT_ROOT, git_info
from lmreport.presets import Edition, Profile
from lmreport.report.context import MissingRecords, SectionView, model_facts
from lmreport.report.filters import FILTERS
from lmreport.sections import all_sections

TEMPLATES_DIR = PROJECT_ROOT / "templates"


def jinja_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             autoescape=False)
    env.filters.update(FILTERS)
    # The implementation measured; render() passes the writeup's own, a template rendered on its own sees lmreport's.
    env.globals["model"] = user_model.reference()
    return env


@dataclass
class Rendered:
    markdown: Path
    pdf: Path | None
    records: list[dict]  # the records the writeup used
    sections: list[dict]  # name, title, status ("ok", "missing" or "failed")
    not_used: dict = field(default_factory=dict)  # (edition, profile) -> records of other plans under runs/
    other_models: dict = field(default_factory=dict)  # flags of another implementation (--model ...) -> its records
    stale: int = 0  # records used that measured an earlier version of their model's source


def title_facts(edition: Edition, profile: Profile, records: list[dict], model: user_model.ModelSpec | None = None) -> dict:
    git = git_info()
    commit = (git["commit"] or "unknown")[:12] + (" (uncommitted changes)" if git["dirty"] else "")
    devices = sorted({r.get("environment", {}).get("device") or "unknown" for r in records})
    return {
        "title": "Transformer systems study: the writeup",
        "subtitle": f"{edition.year} handout edition · profile {profile.name}",
        "date": date.today().isoformat(),
        "facts": [
            {"label": "Date", "value": date.today().isoformat()},
            {"label": "Git commit", "value": commit},
            {"label": "Profile", "value": f"{profile.name}: {profile.description}"},
            {"label": "Edition", "value": str(edition.year)},
            {"label": "Model", "value": _model_fact(model or user_model.reference())},
            {"label": "Devices", "value": "; ".join(devices) if devices else "none (no records yet)"},
            {"label": "Records", "value": str(len(records))},
        ],
    }


def _model_fact(spec: user_model.ModelSpec) -> str:
    who = "lmreport's reference implementation" if spec.is_reference else "your implementation"
    return f"{spec.label} ({who}; source sha256 {spec.model.short_sha or 'unknown'})"


def build_sections(records: list[dict], edition: Edition, profile: Profile, figures_dir: Path,
                   model: user_model.ModelSpec | None = None) -> list[dict]:
    out = []
    run = store.run_name(edition.year, profile.name, None if model is None or model.is_reference else model.slug)
    for s in all_sections().values():
        view = SectionView(s, [r for r in records if r["section"] == s.name], edition, profile, run, figures_dir,
                           all_records=tuple(records), model=model)
        try:
            ctx, template, status = s.report_module().build(view), s.template, "ok"
        except MissingRecords as e:
            ctx = {"reason": str(e), "command": view.run_command()}
            template, status = "sections/_missing.md.j2", "missing"
        except Exception as e:  # noqa: BLE001 - one broken section must not cost the user the others
            ctx, template, status = _failure(s.name, "building", e), "sections/_failed.md.j2", "failed"
        where = view.provenance()
        out.append({"name": s.name, "title": s.title, "template": template, "status": status,
                    "devices": where["devices"], "hosts": where["hosts"], "models": where["models"],
                    "measures_model": s.measures_model, "ctx": ctx})
    return out


def _failure(section: str, stage: str, e: Exception) -> dict:
    """A section that crashed: warn on one line, and give its chapter a note instead of its body."""
    error = f"{type(e).__name__}: {e}".strip()
    warnings.warn(f"section {section}: {stage} failed ({error}); the rest of the writeup is rendered "
                  "(set LMREPORT_DEBUG=1 for the traceback)", stacklevel=3)
    if os.environ.get("LMREPORT_DEBUG"):
        raise e
    return {"error": error, "section": section}


def render_bodies(env: jinja2.Environment, sections: list[dict], **variables) -> None:
    """Render each section's template on its own, so a template error fails one chapter only."""
    for s in sections:
        try:
            s["body"] = env.get_template(s["template"]).render(ctx=s["ctx"], s=s, **variables)
        except Exception as e:  # noqa: BLE001 - as in build_sections
            s["ctx"], s["template"], s["status"] = _failure(s["name"], "rendering its template", e), \
                "sections/_failed.md.j2", "failed"
            s["body"] = env.get_template(s["template"]).render(ctx=s["ctx"], s=s, **variables)


def split_by_model(records: list[dict], spec: user_model.ModelSpec) -> tuple[list[dict], dict[str, int]]:
    """(the records of spec's writeup, the flags of each other implementation -> its records left out).

    Records of sections that measure the model belong to the implementation they name (user_model.belongs);
    the others (attention, precision) to every writeup. Two implementations never mix in one table.
    """
    measured = {s.name for s in all_sections().values() if s.measures_model}
    mine, others = [], {}
    for r in records:
        if user_model.belongs(r, spec, r["section"] in measured):
            mine.append(r)
        else:
            flags = user_model.ModelSpec.from_config(user_model.implementation_of(r, True)).flags()
            others[flags] = others.get(flags, 0) + 1
    return mine, others


def render(runs_dir: Path, out_dir: Path, edition: Edition, profile: Profile, pdf: bool = True,
           model: user_model.ModelSpec | None = None) -> Rendered:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = model or user_model.reference()
    loaded = store.load_records(runs_dir)
    this_plan = [r for r in loaded if store.in_plan(r, edition.year, profile.name)]
    mine, other_models = split_by_model(this_plan, spec)
    records = store.select(mine, edition.year, profile.name)
    sections = build_sections(records, edition, profile, out_dir / "figures", spec)
    meta = title_facts(edition, profile, records, spec)
    env = jinja_env()
    render_bodies(env, sections, meta=meta, edition=edition, profile=profile, model=spec)
    from lmreport.report.run_cost import run_cost
    cost = run_cost(records, [(s["name"], s["title"]) for s in sections])
    text = env.get_template("writeup.md.j2").render(meta=meta, sections=sections, edition=edition, profile=profile,
                                                    run_cost=cost, model=spec)
    md = out_dir / "writeup.md"
    md.write_text(text)
    pdf_path = None
    if pdf:
        from lmreport.report.pdf import markdown_to_pdf
        used = [{k: v for k, v in r.items() if k != "_path"} for r in records]
        pdf_path = markdown_to_pdf(md, out_dir / "writeup.pdf", meta,
                                   attachments={"records.json": json.dumps(used, indent=1).encode()})
    return Rendered(md, pdf_path, records, [{k: s[k] for k in ("name", "title", "status")} for s in sections],
                    store.other_plans(loaded, edition.year, profile.name), other_models, model_facts(records)["stale"])
