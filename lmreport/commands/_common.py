"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmreport import presets
from lmreport.errors import UserError


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=sorted(presets.PROFILES),
                   help="sweep profile (default: cpu without CUDA, handout-EDITION with it)")
    p.add_argument("--edition", type=int, choices=presets.EDITIONS,
                   help=f"handout edition (default {presets.DEFAULT_EDITION}, or the profile's)")
    p.add_argument("--runs-dir", type=runs_dir, default=Path("runs"), help="where records live (default: runs)")


def runs_dir(text: str) -> Path:
    """--runs-dir: a folder, or a path where one can be made (not an existing file)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder of records")
    return path


def resolve_plan(args):
    """(Profile, Edition) from --profile/--edition, the default following the machine."""
    from lmreport.device import cuda_available
    try:
        cuda = cuda_available() if args.profile is None else False
        return presets.resolve(args.profile, args.edition, cuda)
    except ValueError as e:
        raise UserError(str(e)) from None
