"""What a section's report module sees: its records, the edition and profile, a figure folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmreport import user_model
from lmreport.presets import Edition, Profile, default_profile_name, profile
from lmreport.sections import Section

if TYPE_CHECKING:
    import pandas as pd


class MissingRecords(Exception):
    """Raised by a section's build() when it has nothing to show; the message is the reason."""


@dataclass
class SectionView:
    section: Section
    records: list[dict]  # the selected records of this section (one per cell)
    edition: Edition
    profile: Profile
    run: str  # folder name the run command writes to
    figures_dir: Path  # where plots go (build/figures)
    figures_rel: str = "figures"  # the same folder, relative to writeup.md
    all_records: tuple[dict, ...] = ()  # the selected records of every section (cross-section answers)
    model: user_model.ModelSpec | None = None  # the implementation this writeup is of (None: lmreport's)

    @property
    def spec(self) -> user_model.ModelSpec:
        return self.model or user_model.reference()

    def records_of(self, section: str) -> list[dict]:
        """Another section's records, e.g. bench timings next to nsys totals."""
        return [r for r in self.all_records if r["section"] == section]

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "ok"]

    def by_cell(self) -> dict[str, dict]:
        return {r["cell"]: r for r in self.records}

    def frame(self) -> pd.DataFrame:
        """One row per record: cell, status, error, device, host, config.*, metrics.* (flattened)."""
        import pandas as pd  # here, not at import: every CLI start loads this module through the section registry
        if not self.records:
            return pd.DataFrame()
        rows = [{"cell": r["cell"], "status": r["status"], "error": r.get("error"),
                 "device": r.get("environment", {}).get("device"), "host": r.get("environment", {}).get("host"),
                 "config": r["config"], "metrics": r["metrics"]} for r in self.records]
        return pd.json_normalize(rows, sep=".")

    def provenance(self, records: list[dict] | None = None) -> dict:
        """Which device(s), host(s) and profile produced these records (default: the section's).

        Every table says where its numbers come from; `line` is the sentence to print under a
        table, and `mixed` is True when one table would hold numbers from different devices
        (records merged from several machines), which the line then flags. A record whose device
        is not known (a worker or Slurm job that died before saying which GPU it had: runner,
        slurm) names no device of its own, so it makes no table "mixed"; "unknown" is said only
        when no record names one.
        """
        recs = self.records if records is None else records
        env = [r.get("environment") or {} for r in recs]
        devices = sorted({e["device"] for e in env if e.get("device")}) or (["unknown"] if recs else [])
        hosts = sorted({e.get("host") or "unknown" for e in env})
        mixed = len(devices) > 1
        where = "; ".join(devices) if devices else "no device (formulas only)"
        line = (f"{'**Mixed devices:** ' if mixed else 'Device: '}{where} · host{'s' if len(hosts) > 1 else ''} "
                f"{', '.join(hosts)} · profile {self.profile.name}") if recs else f"Formulas only · profile {self.profile.name}"
        models = model_facts(recs)
        line += models["line"]
        return {"devices": devices, "hosts": hosts, "profile": self.profile.name, "mixed": mixed, "line": line,
                "models": models["labels"], "stale": models["stale"]}

    def plan_flags(self, prof: Profile | None = None) -> str:
        """The flags that select this plan, ' --profile P [--edition E] [--model M]' (or this edition under
        another profile)."""
        prof = prof or self.profile
        return f" --profile {prof.name}" + ("" if prof.edition else f" --edition {self.edition.year}") + self.spec.flags()

    def run_command(self, section: str | None = None, prof: Profile | None = None) -> str:
        """`lmreport run SECTION ...` for this plan; by default this section and this view's profile."""
        return f"lmreport run {section or self.section.name}{self.plan_flags(prof)}"

    @property
    def gpu_profile(self) -> Profile:
        """The profile a CUDA machine runs by default for this edition (its handout sizes)."""
        return profile(default_profile_name(True, self.edition.year))

    def figure_path(self, name: str) -> tuple[Path, str]:
        """(file to save, path to write in Markdown) for a figure of this section."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        fname = f"{self.section.name}-{name}"
        return self.figures_dir / fname, f"{self.figures_rel}/{fname}"

    def save_figure(self, fig, name: str) -> str:
        """Save a matplotlib figure as this section's `name`.png; returns the path to write in Markdown.

        ".png" is appended, not substituted, so a name with a dot ("2.7B") keeps all of itself.
        matplotlib is imported here, when a figure is saved, not when the section registry loads.
        """
        from lmreport.report import plots
        path, rel = self.figure_path(name)
        plots.save(fig, path.with_name(path.name + ".png"))
        return rel + ".png"

    def require_records(self) -> None:
        if not self.records:
            raise MissingRecords(f"no records for this section in runs/{self.run}/{self.section.name}/")


def model_facts(records: list[dict]) -> dict:
    """Which implementation(s) measured these records, for the line under a table.

    labels: every implementation named (module:Class, ...); stale: records measured with a source file that
    has changed since (user_model.stale). The line names the model when it is not lmreport's own, or when
    the source changed, so that every table of a user's writeup says whose code it measured and a table
    of an edited model says that its numbers are of the earlier code.
    """
    impls = [impl for r in records
             if isinstance(impl := (r.get("config") or {}).get("implementation"), dict) and impl.get("model")]
    labels = sorted({user_model.label_of(i) for i in impls})
    shas = sorted({i.get("model_sha256") or "" for i in impls})
    stale = sum(bool(user_model.stale(i)) for i in impls)
    ref = user_model.reference().label
    line = ""
    if any(label != ref for label in labels) or stale:
        short = f" (source {shas[0][:12]})" if len(shas) == 1 and shas[0] else ""
        line = f" · model {'; '.join(labels)}{short}"
        if stale:
            line += (f" · **{stale} of these records measured an earlier version of its source**" if stale < len(impls)
                     else " · **measured an earlier version of its source**")
    return {"labels": labels, "stale": stale, "line": line}
