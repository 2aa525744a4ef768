"""The section registry: each report module under lmreport/report/sections/ declares one.

A section is a CLI word, a make target and a template. Its experiment module (imported only
when it runs, since it imports torch) gives `cells(plan)` and `run_cell(cell, artifacts_dir)`;
its report module gives `build(view) -> dict` for its template. Adding a section means adding
those two modules and a template; nothing central changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import lru_cache

from lmreport.errors import UserError


@dataclass(frozen=True)
class Section:
    name: str  # CLI word, make target, records folder
    title: str  # heading in the writeup
    order: int  # position in the writeup
    experiment: str  # module with cells(plan) -> list[Cell] and run_cell(cell, artifacts_dir) -> dict
    report: str  # module with build(view) -> dict
    summary: str = ""  # one line for `lmreport list`
    measures_model: bool = False  # its cells measure the run's implementation (`--model`; user_model.py)

    @property
    def template(self) -> str:
        return f"sections/{self.name}.md.j2"

    def experiment_module(self):
        return importlib.import_module(self.experiment)

    def report_module(self):
        return importlib.import_module(self.report)


@lru_cache(maxsize=1)
def all_sections() -> dict[str, Section]:
    import lmreport.report.sections as pkg
    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        if hasattr(mod, "SECTION"):
            found.append(mod.SECTION)
    return {s.name: s for s in sorted(found, key=lambda s: s.order)}


def get(name: str) -> Section:
    sections = all_sections()
    if name not in sections:
        raise UserError(f"unknown section {name!r}: choose one of {', '.join(sections)} (or 'all')")
    return sections[name]
