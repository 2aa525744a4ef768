"""The requirements pyproject.toml states, one per line: what `make wheels` downloads.

    python -m lmreport.requirements [--extra dev] [--extra pdf] [--build] [--without torch]

Runs with the bare interpreter before anything is installed (tomllib, or tomli before Python 3.11).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise SystemExit(f"lmreport: error: reading {path} needs Python 3.11+ or the tomli package") from None
    with open(path, "rb") as f:
        return tomllib.load(f)


def name_of(requirement: str) -> str:
    """The distribution name a requirement string starts with, normalised (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def requirements(extras: tuple[str, ...] = (), build: bool = False, without: tuple[str, ...] = (),
                 path: Path = PYPROJECT) -> list[str]:
    data = _toml(path)
    project = data["project"]
    out = list(project.get("dependencies", []))
    for extra in extras:
        out += project.get("optional-dependencies", {})[extra]
    if build:
        out += data.get("build-system", {}).get("requires", [])
    skip = {name_of(w) for w in without}
    return [r for r in out if name_of(r) not in skip]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmreport.requirements", description=__doc__.splitlines()[0])
    p.add_argument("--extra", action="append", default=[], help="an optional-dependencies group (repeatable)")
    p.add_argument("--build", action="store_true", help="also the build backend ([build-system] requires)")
    p.add_argument("--without", action="append", default=[], help="leave this distribution out (repeatable)")
    args = p.parse_args(argv)
    print("\n".join(requirements(tuple(args.extra), args.build, tuple(args.without))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
