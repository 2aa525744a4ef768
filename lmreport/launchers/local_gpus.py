"""`--executor local-gpus`: one worker process per visible GPU, cells spread over them.

Each worker is a fresh process with CUDA_VISIBLE_DEVICES set to one GPU, so the cell sees that
GPU as `cuda:0` and no other: a child forked from the fork server of forked.py, which sets the
variable before CUDA initialises (LMREPORT_FRESH_PROCESS=exec: the subprocess launcher's child,
`python -m lmreport.runner CELL RECORD`, see process.WorkerProcess). Two cells never share a GPU: timings and memory peaks stay those
of a lone cell. The record's environment keeps CUDA_VISIBLE_DEVICES, so the report can tell
which of the host's GPUs produced a number.

Without a GPU the executor refuses in one line, unless `--workers N` asks for N CPU workers
(useful for the cells that need no GPU, e.g. accounting on the meta device; N CPU workers share
the cores, so do not time anything that way).
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from pathlib import Path

from lmreport.errors import UserError
from lmreport.launchers import Finished, Launcher
from lmreport.launchers import forked
from lmreport.launchers.process import WorkerProcess
from lmreport.runner import Cell

POLL_S = 0.05  # how often finished workers are collected; cells take seconds to hours


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs).

    CUDA_VISIBLE_DEVICES, when set, lists them (torch counts only those; an invalid entry hides
    the ones after it, hence the cut to device_count()); otherwise they are 0..count-1.
    """
    try:
        import torch
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        count = 0
    if count == 0:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [g.strip() for g in listed.split(",") if g.strip()][:count]


class LocalGpusLauncher(Launcher):
    name = "local-gpus"

    def __init__(self, workers: int | None = None, gpus: list[str] | None = None, timeout_s: float | None = None):
        gpus = visible_gpus() if gpus is None else list(gpus)
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be at least 1, not {workers}")
        if gpus:
            if workers is not None and workers > len(gpus):
                raise UserError(f"--workers {workers} but only {len(gpus)} GPU(s) visible ({', '.join(gpus)}): "
                                "cells sharing a GPU would spoil each other's timings and memory peaks")
            self.slots: list[str | None] = gpus[:workers or len(gpus)]
        elif workers:
            self.slots = [None] * workers  # CPU workers: CUDA_VISIBLE_DEVICES left as it is
        else:
            raise UserError("--executor local-gpus: no CUDA GPU is visible on this machine; use --executor inline, "
                            "or add --workers N to run N CPU worker processes in parallel")
        self.timeout_s = timeout_s

    def _env(self, gpu: str | None) -> dict | None:
        if gpu is None:
            return None
        return {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}

    def run_many(self, todo: list[tuple[Cell, Path]], finished: Finished) -> Counter:
        forked.mode()  # a bad LMREPORT_FRESH_PROCESS is refused before any cell runs
        pending = deque(todo)
        free = list(self.slots)
        running: list[tuple[WorkerProcess, str | None, float]] = []
        try:
            while pending or running:
                while pending and free:
                    c, path = pending.popleft()
                    gpu = free.pop(0)
                    running.append((forked.start(c, path, env=self._env(gpu), launcher=self.name), gpu, time.monotonic()))
                for item in list(running):
                    worker, gpu, t0 = item
                    if worker.done():
                        code = None
                    elif self.timeout_s is not None and time.monotonic() - t0 > self.timeout_s:
                        worker.stop()
                        code = "timeout"
                    else:
                        continue
                    running.remove(item)
                    free.append(gpu)
                    finished(worker.cell, worker.finish(code))
                if running:
                    time.sleep(POLL_S)
        except BaseException:  # Ctrl-C or SIGTERM: unfinished cells write nothing
            for worker, _, _ in running:
                worker.stop()
            raise
        return Counter()
