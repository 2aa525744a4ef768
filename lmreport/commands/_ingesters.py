"""Discovery of the modules under lmreport/ingest/ (imported lazily: no torch at import)."""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache


@lru_cache(maxsize=1)
def ingesters() -> list:
    import lmreport.ingest as pkg
    return [importlib.import_module(f"{pkg.__name__}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)
            if not m.name.startswith("_")]
