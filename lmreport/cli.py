"""`lmreport` command line: one subcommand per module in lmreport/commands/.

Errors meant for the user are one line on stderr and a non-zero exit; set LMREPORT_DEBUG=1
to see tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings

from lmreport.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage first) and exit status 2.

    Subcommand parsers inherit the class (add_subparsers defaults parser_class to type(self)).
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    import lmreport.commands as pkg
    parser = OneLineParser(prog="lmreport", description="Run a transformer-systems study and render its writeup.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = [importlib.import_module(f"{pkg.__name__}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)
               if not m.name.startswith("_")]
    for mod in sorted(modules, key=lambda m: getattr(m, "ORDER", 100)):
        mod.register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"lmreport: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning
    args = build_parser().parse_args(argv)
    debug = bool(os.environ.get("LMREPORT_DEBUG"))
    try:
        return args.func(args) or 0
    except UserError as e:
        if debug:
            raise
        print(f"lmreport: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lmreport inspect ... | head`: the reader has gone, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0
    except OSError as e:  # a path the user gave (or its disk) refused: name it; it is not a bug
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"lmreport: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmreport: interrupted; finished cells are saved, rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line unless debugging
        if debug:
            raise
        print(f"lmreport: error: {type(e).__name__}: {e} (set LMREPORT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
