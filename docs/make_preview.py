"""Make docs/preview.png, the picture of the output in the README (`make preview`).

Renders pages of build/writeup.typ (written by `lmreport render`) to PNG with typst, picks
the title page and the first page of a few chapters by their headings (read back from the
PDF with pypdf, so the picture follows the writeup as it changes) and lays them out in a row.
"""

from __future__ import annotations

import io
import re
import sys
import unicodedata
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

BUILD = Path("build")
OUT = Path("docs/preview.png")
CHAPTERS = ("Accounting: parameters", "Warm-up", "Kernel profiles: where", "Memory timelines")  # headings to show


def main() -> int:
    import typst
    from pypdf import PdfReader
    typ, pdf = BUILD / "writeup.typ", BUILD / "writeup.pdf"
    if not typ.exists() or not pdf.exists():
        print(f"lmreport: error: {pdf} not found: run `make report` (or `make render`) first", file=sys.stderr)
        return 2
    texts = [unicodedata.normalize("NFKC", p.extract_text() or "") for p in PdfReader(pdf).pages]
    def first_page(heading: str) -> int | None:
        # a numbered heading at the start of a line ("6.1 (a) Memory timelines"), not a TOC entry
        pattern = re.compile(rf"^\d+(\.\d+)* .*{re.escape(heading)}", re.M)
        toc = 2  # the title page and the table of contents list every heading too
        return next((i for i, t in enumerate(texts) if i >= toc and pattern.search(t)), None)

    picks = [0] + [first_page(h) for h in CHAPTERS]
    picks = sorted({i for i in picks if i is not None})
    pages = typst.compile(str(typ), format="png", ppi=72)
    fig, axes = plt.subplots(1, len(picks), figsize=(4 * len(picks), 5.8))
    for ax, i in zip(axes, picks):
        ax.imshow(mpimg.imread(io.BytesIO(pages[i]), format="png"))
        ax.set_title(f"page {i + 1}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    OUT.parent.mkdir(exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT} (pages {', '.join(str(i + 1) for i in picks)} of {len(pages)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
