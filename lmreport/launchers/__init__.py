"""How cells are launched: one small interface, one module per way of launching.

What to run comes from the experiments (runner.Cell); what a cell measures is the
experiment's; a launcher only decides in which process a cell runs and when:

- inline      (inline.py)      in this process, one cell after another;
- subprocess  (process.py)     one fresh Python process per cell;
- worker      (worker.py)      one long-lived process per section that runs its cells one after
                               another, keeping the CUDA context and built models; cells that must
                               start clean (`Cell.fresh_process`) still get a process of their own,
                               forked from a server that has imported torch (forked.py);
- local-gpus  (local_gpus.py)  one process per cell (forked likewise), one cell per visible GPU at a time;
- slurm       (slurm.py)       a job array per section through submitit.

Every launcher ends in `runner.execute_cell` in some process, which writes the cell's record,
so records are the same whichever launched them (they say which: `launcher`, and `wall_s`, the
wall time from launch to record). This package imports nothing heavy: runner.run_sweep looks a
launcher up by name here when it is given a name.
"""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from lmreport.runner import Cell

Finished = Callable[["Cell", dict], None]


class Launcher:
    """Runs cells and hands back their records.

    A launcher implements `run_many(todo, finished)` (cells that run in parallel or as a batch
    call finished(cell, record) as each one ends, and return counts of what did not end here, e.g.
    Slurm jobs left queued), or `run(cell, record_file) -> record` for one cell at a time; each has
    a default in terms of the other, so a subclass that implements neither is refused when it is
    defined (TypeError) instead of recursing forever when it is first used.
    """

    name = "launcher"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.run is Launcher.run and cls.run_many is Launcher.run_many:
            raise TypeError(f"{cls.__qualname__} implements neither run nor run_many of Launcher (each defaults to "
                            "the other)")

    def run(self, c: Cell, record_file: Path) -> dict:
        out: list[dict] = []
        self.run_many([(c, Path(record_file))], lambda _c, record: out.append(record))
        return out[0]

    def run_many(self, todo: list[tuple[Cell, Path]], finished: Finished) -> Counter:
        for c, path in todo:
            finished(c, self.run(c, path))
        return Counter()


# Name -> "module:class" (imported when used: slurm needs submitit, local-gpus asks torch for GPUs).
LAUNCHERS: dict[str, str] = {
    "inline": "lmreport.launchers.inline:InlineLauncher",
    "subprocess": "lmreport.launchers.process:SubprocessLauncher",
    "worker": "lmreport.launchers.worker:WorkerLauncher",
    "local-gpus": "lmreport.launchers.local_gpus:LocalGpusLauncher",
    "slurm": "lmreport.launchers.slurm:SubmititLauncher",
}


def launcher_class(name: str) -> type:
    module, cls = LAUNCHERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get(name: str, **options) -> Launcher:
    """A launcher by its `--executor` name, with its options."""
    return launcher_class(name)(**options)


def default_name() -> str:
    """worker with CUDA (the fixed costs of a process, CUDA context included, are paid once per
    section; cells whose measurement needs a clean process still get one); inline without."""
    from lmreport.device import cuda_available
    return "worker" if cuda_available() else "inline"
