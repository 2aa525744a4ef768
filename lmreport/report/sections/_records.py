"""Records a section can read; the others are skipped with one warning naming the file.

A record can be valid JSON with every key store.read_record asks for and still not be one a
section understands: written by an older version, edited by hand, or copied into the wrong
folder. Rendering must not stop with a KeyError then, nor show a half-filled row: each
section's report module says what its records need (`problem(record) -> str | None`), and
this module drops the ones that lack it, as store.load_records drops unreadable files.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Callable, Iterable


def where(r: dict) -> str:
    """The record's file (store.read_record keeps it), or its section and cell."""
    return r.get("_path") or f"record {r.get('section')}/{r.get('cell')}"


def readable(records: Iterable[dict], problem: Callable[[dict], str | None], warn: bool = True) -> list[dict]:
    """The records without a problem; one warning per other record, naming its file and what is wrong.

    warn=False for another section's records (precision reads bench's): their own section warns.
    """
    out = []
    for r in records:
        why = problem(r)
        if why:
            if warn:
                warnings.warn(f"skipped {where(r)}: {why} (delete it and rerun the cell)", stacklevel=2)
        else:
            out.append(r)
    return out


def missing_keys(d: object, keys: Iterable[str], what: str) -> str | None:
    """'config lacks size, ctx' when d is not a dict or lacks some of keys."""
    if not isinstance(d, dict):
        return f"{what} is not a JSON object"
    lacking = [k for k in keys if k not in d]
    return f"{what} lacks {', '.join(lacking)}" if lacking else None


def bad_stats(m: dict, key: str) -> str | None:
    """A timing metric must be a timing.Stats dict (mean, std, median, n, samples) of numbers."""
    s = m.get(key)
    if s is None:
        return f"metric {key} is missing"
    if not isinstance(s, dict):
        return f"metric {key} is not a timing (mean, std, median, n, samples)"
    why = missing_keys(s, ("mean", "std", "median", "n", "samples"), f"metric {key}")
    if why:
        return why
    if not all(isinstance(s[k], numbers.Real) for k in ("mean", "std", "median")) or not isinstance(s["samples"], list):
        return f"metric {key} holds non-numbers"
    return None


def config_and_metrics(r: dict, config_keys: Iterable[str]) -> tuple[str | None, dict, dict]:
    """(the first problem with config or metrics, config, metrics) of a record."""
    c, m = r.get("config"), r.get("metrics")
    why = missing_keys(c, config_keys, "config")
    if why is None and not isinstance(m if m is not None else {}, dict):
        why = "metrics is not a JSON object"
    return why, c if isinstance(c, dict) else {}, m if isinstance(m, dict) else {}
