"""lmreport estimate memory --size S --ctx N --mode forward|train [...] [--json]: memory of one
step at full size, estimated on fake tensors (no GPU, nothing allocated)."""

from __future__ import annotations

import json

from lmreport import presets
from lmreport.commands._common import add_model_arguments, resolve_model
from lmreport.errors import UserError

ORDER = 45


def register(sub) -> None:
    p = sub.add_parser("estimate", help="estimate memory at full size without a GPU (fake tensors)")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    q = what.add_parser("memory", help="peak memory of one step and its breakdown")
    q.add_argument("--size", required=True, help="model size of the edition's table (e.g. 2.7B, xl) or tiny/mini")
    q.add_argument("--ctx", required=True, type=int, help="context length")
    q.add_argument("--mode", required=True, choices=("forward", "train"),
                   help="forward: inference under no_grad; train: forward, loss, backward, AdamW")
    q.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="fp32 or bf16 autocast (default fp32)")
    q.add_argument("--batch", type=int, default=None, help="batch size (default: the edition's, 4)")
    q.add_argument("--edition", type=int, choices=presets.EDITIONS, default=presets.DEFAULT_EDITION,
                   help=f"whose model table (default {presets.DEFAULT_EDITION})")
    q.add_argument("--first-step", action="store_true",
                   help="train: the first step (optimizer state allocated inside it) instead of a later one")
    q.add_argument("--with-grad", action="store_true", help="forward: with autograd recording, output kept")
    q.add_argument("--target", choices=("cuda", "cpu"), default="cuda",
                   help="whose autocast rules decide bf16 dtypes (default cuda)")
    q.add_argument("--json", action="store_true", help='print {"peak_bytes": ..., "breakdown": {...}}')
    add_model_arguments(q)
    q.set_defaults(func=main)


def main(args) -> int:
    ed = presets.edition(args.edition)
    table = presets.model_table(ed)
    if args.size not in table:
        raise UserError(f"unknown size {args.size!r} for the {ed.year} edition: choose one of {', '.join(table)}")
    batch = args.batch if args.batch is not None else ed.batch_size
    if batch <= 0 or args.ctx <= 0:
        raise UserError(f"--batch and --ctx must be positive (got {batch} and {args.ctx})")
    if args.first_step and args.mode != "train":
        raise UserError("--first-step describes a training step: use it with --mode train")
    if args.with_grad and args.mode != "forward":
        raise UserError("--with-grad describes a forward pass: use it with --mode forward")
    spec = resolve_model(args, load=True)
    from lmreport.estimate.memory import estimate_memory
    from lmreport.user_model import NotAbstract
    try:
        e = estimate_memory(table[args.size], batch, args.ctx, args.mode, args.dtype,
                            step="first" if args.first_step else "steady", grad=args.with_grad, target=args.target,
                            spec=spec)
    except NotAbstract as err:
        raise UserError(f"--model {spec.model.target}: cannot be estimated without allocating ({err})") from None
    if args.json:
        print(json.dumps(e.summary(), indent=1))
        return 0
    gib = 1024**3
    what = {"forward": "forward (inference, no_grad)" if not args.with_grad else "forward with autograd recording",
            "train": f"training step ({'first step' if args.first_step else 'after warm-up'})"}[args.mode]
    print(f"{args.size} ({ed.year} table), batch {batch}, context {args.ctx}, {what}, {args.dtype}"
          f" ({args.target.upper()} autocast rules), estimated on fake tensors in {e.seconds:.1f} s"
          + ("" if spec.is_reference else f"; model {spec.label}"))
    if e.fallback:
        print(f"fell back: {e.fallback}")
    print(f"peak {e.peak_bytes / gib:,.2f} GiB ({e.peak_bytes:,} bytes) during {e.peak_phase}")
    for k, v in e.breakdown.items():
        extra = f" (of which autocast weight copies {e.weight_copies_bytes / gib:,.2f} GiB)" if k == "temporaries" and e.weight_copies_bytes else ""
        print(f"  {k:<16} {v / gib:>9,.2f} GiB{extra}")
    print("highest memory per phase: " + "; ".join(f"{k} {v / gib:,.2f} GiB" for k, v in e.phase_peaks.items()))
    return 0
