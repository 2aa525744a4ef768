"""Subcommands of `lmreport`: each module has `register(subparsers)` and an optional ORDER."""
