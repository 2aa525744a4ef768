"""Restricted unpickling for files we did not write (CUDA memory snapshots from elsewhere).

`pickle.load` on an untrusted file runs whatever callable the file names (os.system, eval,
...): the pickle format builds objects by calling `find_class(module, name)` for GLOBAL and
STACK_GLOBAL (and the copyreg extension codes EXT1/2/4), then REDUCE/NEWOBJ/BUILD call what
it returned. The defence the Python documentation gives ("Restricting Globals",
https://docs.python.org/3/library/pickle.html#restricting-globals) is to override
`find_class`. A memory snapshot (torch.cuda.memory._snapshot(), torch/cuda/memory.py) holds
only dicts, lists, tuples, str, int, float, bool and None, all of which pickle as dedicated
opcodes that never go through find_class, so this unpickler allows no global at all: a file
that names any class or callable is refused before anything it names is imported or called.
Persistent ids (another way to hand objects to the loader) are refused too. One more door:
the extension opcodes EXT1/2/4 first look in copyreg's process-wide `_extension_cache`, and
only on a miss call find_class (Modules/_pickle.c, load_extension); a plain unpickling
anywhere in the process of an extension code registered with copyreg.add_extension would
leave the resolved callable there for us to be handed. So the cache is cleared before every
load (copyreg.clear_extension_cache; it is only a cache, refilled on demand).

Errors are one line naming the file (errors.InputFileError), never a traceback.
"""

from __future__ import annotations

import copyreg
import gc
import io
import pickle
from pathlib import Path

from lmreport.errors import InputFileError


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global (class or callable); nothing was imported or called."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module = module
        self.name = name


class RestrictedUnpickler(pickle.Unpickler):
    """Loads builtin containers and scalars only; any global is refused."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's API
        raise RefusedGlobal(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


def loads(data: bytes, path: str | Path = "<bytes>"):
    return _load(io.BytesIO(data), path)


def load(path: str | Path):
    """Load a pickle file safely; InputFileError (one line, names the file) when refused or broken."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputFileError(path, f"cannot open it ({e.strerror or e})") from None
    with f:
        return _load(f, path)


def _load(f, path):
    # The cyclic garbage collector would run again and again while a large snapshot creates
    # millions of containers (most of the load time); nothing is collectable until it returns.
    enabled = gc.isenabled()
    gc.disable()
    copyreg.clear_extension_cache()  # see the module doc: EXT opcodes must reach find_class
    try:
        return RestrictedUnpickler(f).load()
    except RefusedGlobal as e:
        raise InputFileError(path, f"refused: the pickle names the global {e.module}.{e.name}; memory snapshots "
                                   "hold only builtin containers and scalars, so nothing in this file was loaded "
                                   "or run") from None
    except EOFError:
        raise InputFileError(path, "truncated: the pickle ends before its STOP opcode (an incomplete copy?)") from None
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "truncated" in msg or "ran out of input" in msg.lower() or "pickle data was truncated" in msg:
            raise InputFileError(path, "truncated: the pickle ends before its STOP opcode (an incomplete copy?)") from None
        raise InputFileError(path, f"not a readable pickle ({msg})") from None
    except MemoryError:
        raise InputFileError(path, "not a readable pickle (it declares more data than fits in memory)") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, UnicodeDecodeError,
            RecursionError) as e:
        raise InputFileError(path, f"not a readable pickle ({type(e).__name__}: {e})") from None
    finally:
        if enabled:
            gc.enable()
