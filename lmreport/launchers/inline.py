"""`--executor inline`: every cell in this process, one after another (the default without CUDA).

Fastest, and what the tests use. A cell that crashes the interpreter takes the sweep with it;
on a GPU, the subprocess and worker launchers keep such failures to one cell.
"""

from __future__ import annotations

from pathlib import Path

from lmreport.launchers import Launcher
from lmreport.runner import Cell, execute_cell


class InlineLauncher(Launcher):
    name = "inline"

    def run(self, c: Cell, record_file: Path) -> dict:
        return execute_cell(c, record_file, launch={"launcher": self.name})
