"""How long the run behind a writeup took, and how much of it was overhead (the About page).

From the records alone. Per cell: `wall_s` (from launch to record: a fresh process's start, its
imports and CUDA set-up included; records older than this key, and Slurm jobs, have only
`duration_s`, the time inside runner.execute_cell), `duration_s`, and `timed_s` (time inside the
timed steps, warm-up included, timing.timed_work). Overhead is what is not measurement:

- launch: wall_s - duration_s (process start and what ran before the cell);
- around the timed steps, for cells that time steps: duration_s - timed_s (imports and CUDA
  set-up in a fresh process's first cell, model build, data, teardown, the record).

A cell that times no steps (formulas on `meta`, estimates, snapshots) is all work but its launch.
Ingested records (nothing ran here: no duration) are left out; records made before lmreport kept
`wall_s` count with their duration_s, and their split into timed steps and overhead is unknown.
"""

from __future__ import annotations

from collections import Counter


def _row(r: dict) -> dict | None:
    duration = float(r.get("duration_s") or 0.0)
    wall = r.get("wall_s")
    if not duration and wall is None:
        return None
    known = wall is not None  # a record made since lmreport records wall_s (and timed_s where steps are timed)
    wall_s = max(float(wall), duration) if known else duration
    timed = float(r.get("timed_s") or 0.0)
    around_s = max(0.0, duration - timed) if r.get("timed_s") is not None else 0.0
    return {"section": r["section"], "wall_s": wall_s, "known": known, "timed_s": timed if known else 0.0,
            "overhead_s": (wall_s - duration) + around_s if known else 0.0,
            "launcher": r.get("launcher") or "not recorded"}


def _summary(rows: list[dict]) -> dict:
    known = [x for x in rows if x["known"]]
    known_wall = sum(x["wall_s"] for x in known)
    overhead = sum(x["overhead_s"] for x in known)
    launchers = Counter(x["launcher"] for x in rows)
    return {"cells": len(rows), "wall_s": sum(x["wall_s"] for x in rows),
            "known_cells": len(known), "known_wall_s": known_wall,
            "timed_s": sum(x["timed_s"] for x in known) if known else None,
            "overhead_s": overhead if known else None,
            "overhead_share": overhead / known_wall if known_wall else None,
            "launchers": ", ".join(f"{name} ({n})" for name, n in launchers.most_common())}


def run_cost(records: list[dict], sections: list[tuple[str, str]]) -> dict | None:
    """{"sections": [per section: name, title, cells, wall_s, and over the records that say how their
    time split (known_cells, known_wall_s): timed_s, overhead_s, overhead_share; launchers], "total":
    the same over all}, for `sections` as (name, title) in the writeup's order; None when no record
    ran here. Records older than `wall_s` count in wall_s only (their time inside the cell)."""
    rows = [x for x in map(_row, records) if x is not None]
    if not rows:
        return None
    out = []
    for name, title in sections:
        mine = [x for x in rows if x["section"] == name]
        if mine:
            out.append({"name": name, "title": title, **_summary(mine)})
    return {"sections": out, "total": _summary(rows)}
