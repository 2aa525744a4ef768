"""Shared plotting setup: a headless backend and one consistent, print-friendly style."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 150,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


def new_figure(**kw):
    with plt.rc_context(STYLE):
        return plt.subplots(**kw)


def save(fig, path: Path) -> Path:
    """Save as PNG (small, reliable in Typst), close the figure."""
    path = Path(path).with_suffix(".png")
    with plt.rc_context(STYLE):
        fig.tight_layout()
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
