"""Precision experiments: accumulation loops, autocast dtypes per device, norm sensitivity.

Cells:
- `accumulation`: the handout's four loops (1,000 additions of 0.01) plus bf16 variants, and
  the facts of each format (eps, max, ULP near 10) from torch.finfo / torch.nextafter.
- `toy-autocast-<device>-<fp16|bf16>`: the ToyModel's dtypes under autocast, with hooks. The CPU
  cells run anywhere; the CUDA cells need a GPU and are recorded `skipped` elsewhere, because
  CPU autocast has its own op lists (LayerNorm stays low precision on CPU) and its dtypes are
  not CUDA's answer.
- `norm-sensitivity`: x^2 overflow, a normalised row with an outlier, mean(x^2) error by width,
  the norm's eps per format. IEEE arithmetic is the same on every device, so these run on CPU.

All cells together take a few seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

from lmreport import precision as P
from lmreport.runner import Cell, CellSkipped, Plan, cell

SECTION = "precision"
AUTOCAST_DEVICES = ("cpu", "cuda")
AUTOCAST_DTYPES = ("fp16", "bf16")


def cells(plan: Plan) -> list[Cell]:
    out = [cell(plan, SECTION, "accumulation", experiment="accumulation", steps=1000, value=0.01)]
    out += [cell(plan, SECTION, f"toy-autocast-{dev}-{dt}", requires="cuda" if dev == "cuda" else "any",
                 experiment="toy-autocast", device=dev, dtype=dt)
            for dev in AUTOCAST_DEVICES for dt in AUTOCAST_DTYPES]
    out.append(cell(plan, SECTION, "norm-sensitivity", experiment="norm-sensitivity", eps=1e-5))
    return out


def run_cell(c: Cell, artifacts_dir: Path) -> dict:
    kind = c.config["experiment"]
    if kind == "accumulation":
        return {"metrics": {"loops": P.accumulation(c.config["steps"], c.config["value"]),
                            "formats": {name: P.format_facts(name) for name in P.DTYPES}}}
    if kind == "toy-autocast":
        device = c.config["device"]
        if device == "cuda":
            import torch
            if not torch.cuda.is_available():  # the runner checks too; a direct call must not crash
                raise CellSkipped("needs a CUDA GPU; run `lmreport run precision` on a CUDA machine")
        return {"metrics": {"dtypes": P.toy_autocast_dtypes(device, c.config["dtype"])}}
    if kind == "norm-sensitivity":
        import torch
        return {"metrics": {"square_overflow": P.square_overflow(),
                            "outlier_row": P.rms_norm_with_outlier(),
                            "mean_error_by_width": P.mean_error_by_width(),
                            "eps": P.eps_representation(c.config["eps"]),
                            "formats": {name: P.format_facts(name) for name in P.DTYPES},
                            "torch": torch.__version__}}
    raise ValueError(f"unknown precision experiment {kind!r}")
