"""Progress of a sweep or of a wait: a tqdm bar on a terminal, a few plain lines anywhere else.

A log that is not a terminal (CI, a Slurm job's output file, `| tee`) keeps every carriage
return tqdm writes: thousands of updates end up in one line of the file. There, progress is a
plain line each time another `every_frac` of the total is done or `every_s` seconds have passed,
whichever comes first, with the count, the elapsed time and an ETA (the mean time per finished
item so far), and one last line when it closes.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

EVERY_FRAC = 0.1  # a plain line per 10% of the total
EVERY_S = 60.0  # and at least one a minute while something happens


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def clock_text(seconds: float) -> str:
    """0:42, 12:05, 1:02:03."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """`update(n, postfix)`, `set_postfix(text)`, `write(line)`, `close()`: the part of tqdm's interface lmreport uses."""

    def __init__(self, total: int, desc: str, unit: str = "cell", enabled: bool = True, file: TextIO | None = None,
                 every_frac: float = EVERY_FRAC, every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic,
                 terminal: bool | None = None):
        self.file = file if file is not None else sys.stderr
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.every_frac, self.every_s, self.clock = every_frac, every_s, clock
        self.done, self.postfix = 0, ""
        self.t0 = self._last_t = clock()
        self._last_done = 0
        self.terminal = _is_terminal(self.file) if terminal is None else terminal
        self._bar = None
        if enabled and self.terminal:
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.file, dynamic_ncols=True)

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.done += n
        if postfix is not None:
            self.postfix = postfix
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
        else:
            self._maybe_line()

    def set_postfix(self, text: str) -> None:
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)
        else:
            self._maybe_line()

    def write(self, line: str) -> None:
        """A line of its own (a failed cell), above the bar on a terminal."""
        if self._bar is not None:
            self._bar.write(line, file=self.file)
        else:
            print(line, file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.done != self._last_done:
            self._line()
            self._last_done = self.done

    def line(self) -> str:
        """`bench: 12/52 cells (23%), 0:42 elapsed, ETA 2:20 [mini-ctx128-train-fp32]`."""
        elapsed = self.clock() - self.t0
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = ""
        if 0 < self.done < self.total:
            eta = f", ETA {clock_text(elapsed / self.done * (self.total - self.done))}"
        postfix = f" [{self.postfix}]" if self.postfix else ""
        return f"{self.desc}: {self.done}/{self.total} {self.unit}s{pct}, {clock_text(elapsed)} elapsed{eta}{postfix}"

    def _maybe_line(self) -> None:
        if not self.enabled:
            return
        step = max(1, int(self.total * self.every_frac + 0.999999))  # items per plain line: ceil(total * frac)
        due = self.done // step > self._last_done // step or self.done >= self.total > self._last_done
        if due or self.clock() - self._last_t >= self.every_s:
            self._line()

    def _line(self) -> None:
        print(self.line(), file=self.file, flush=True)
        self._last_t, self._last_done = self.clock(), self.done
