"""Markdown -> Typst (pandoc, from pypandoc-binary) -> PDF (typst) -> metadata and attachments (pypdf).

The .typ file is written next to the Markdown because Typst resolves image paths relative
to it. The Typst template (templates/pdf/writeup.typ) gives the title page and the style.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

from lmreport.device import PROJECT_ROOT
from lmreport.errors import UserError

TEMPLATE = PROJECT_ROOT / "templates" / "pdf" / "writeup.typ"
# module -> the distribution of pyproject's `pdf` extra that provides it
PDF_MODULES = {"pypandoc": "pypandoc-binary", "typst": "typst", "pypdf": "pypdf"}


def missing_tools() -> list[str]:
    """Distributions of the `pdf` extra that are not installed (an install from a few wheels may lack them)."""
    return [dist for module, dist in PDF_MODULES.items() if importlib.util.find_spec(module) is None]


def markdown_to_typst(md_path: Path) -> Path:
    import pypandoc
    typ = Path(md_path).with_suffix(".typ")
    try:
        pypandoc.convert_file(str(md_path), "typst", format="markdown", outputfile=str(typ),
                              extra_args=["--standalone", f"--template={TEMPLATE}", "--toc", "--toc-depth=2",
                                          # long lines would make pandoc fix column widths by dash counts
                                          "--columns=10000"])
    except (RuntimeError, OSError) as e:
        raise UserError(f"{md_path}: pandoc could not convert it to Typst: {str(e).strip().splitlines()[-1]}") from None
    return typ


def typst_to_pdf(typ_path: Path) -> bytes:
    import typst
    try:
        return typst.compile(str(typ_path))
    except Exception as e:  # typst raises its own error types with the source location
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{typ_path}: Typst could not compile it: {first}") from None


def markdown_to_pdf(md_path: Path, pdf_path: Path, meta: dict, attachments: dict[str, bytes] | None = None) -> Path:
    missing = missing_tools()
    if missing:
        raise UserError(f"{pdf_path}: the PDF needs {', '.join(missing)} (pip install -e '.[pdf]'); "
                        f"{md_path} is written, or render with --no-pdf")
    from pypdf import PdfReader, PdfWriter
    pdf_bytes = typst_to_pdf(markdown_to_typst(md_path))
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes)))
    writer.add_metadata({
        "/Title": meta["title"],
        "/Subject": meta["subtitle"],
        "/Creator": "lmreport",
        "/Keywords": "; ".join(f"{f['label']}: {f['value']}" for f in meta["facts"]),
    })
    for name, data in (attachments or {}).items():
        writer.add_attachment(name, data)
    pdf_path = Path(pdf_path)
    tmp = pdf_path.with_suffix(".pdf.tmp")
    with open(tmp, "wb") as f:
        writer.write(f)
    tmp.replace(pdf_path)
    return pdf_path
