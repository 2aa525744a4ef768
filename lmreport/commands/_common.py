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
    add_model_arguments(p)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model/--optimizer/--loss: the implementation measured (lmreport/user_model.py)."""
    g = p.add_argument_group("your implementation (default: lmreport's own)")
    g.add_argument("--model", metavar="MODULE:CLASS",
                   help="your transformer LM class, built with the course's keywords (vocab_size, context_length, "
                        "d_model, num_layers, num_heads, d_ff, rope_theta) and called as model(token_ids) -> logits; "
                        "imported from the current folder or an installed package")
    g.add_argument("--optimizer", metavar="MODULE:CLASS", help="your AdamW(params, lr, betas, eps, weight_decay)")
    g.add_argument("--loss", metavar="MODULE:FUNCTION", help="your cross_entropy(logits, targets)")


def resolve_model(args, load: bool = False):
    """The implementation the flags name (user_model.ModelSpec). load=True (commands that measure) imports
    it and runs the checks before measuring (one-line errors; notes about fallbacks on stderr); otherwise it
    is only parsed and its source hashed (render, status, ingest), so nothing of the user's runs."""
    import sys

    from lmreport import user_model
    texts = (getattr(args, "model", None), getattr(args, "optimizer", None), getattr(args, "loss", None))
    if not load:
        return user_model.parse_spec(*texts)
    spec = user_model.load_spec(*texts)
    if not spec.is_reference:
        spec = user_model.check(spec)
        print(f"lmreport: measuring {spec.label} (source sha256 {spec.model.short_sha})", file=sys.stderr)
        for note in spec.probe_notes:
            print(f"lmreport: note: {note}", file=sys.stderr)
    return spec


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
