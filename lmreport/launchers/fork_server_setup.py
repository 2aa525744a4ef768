"""Imported first by the fork server of forked.py (its PRELOAD list), before torch; never imported elsewhere.

It makes a stray `torch.cuda.is_available()` or `torch.cuda.device_count()` in the server harmless to
the children forked from it, as long as NVML answers: with PYTORCH_NVML_BASED_CUDA_CHECK=1 torch
answers is_available() through device_count(), which asks NVML first, instead of the CUDA runtime's
`cudaGetDeviceCount`, which calls `cuInit` and so "poisons" forks: a child forked after it cannot use
CUDA. (torch/cuda/__init__.py, is_available(): "The user has set an env variable to request this
availability check that attempts to avoid fork poisoning by using NVML"; the variable is read when
the function is called, so setting it here, in the server only, is enough.) Where NVML cannot answer
(no NVML library, an NVML error, a CUDA_VISIBLE_DEVICES entry it cannot resolve), device_count() falls
back to `torch._C._cuda_getDeviceCount()`, the poisoning call, and the variable cannot help; older
torch's Dynamo calls device_count() when imported (torch/_dynamo/device_interface.py,
pytorch/pytorch#122085), and PRELOAD imports Dynamo. A server poisoned so is not silent: its children
find torch's bad-fork flag set and run their cells in a new interpreter, and forking stops
(forked.unclean_state, forked.ForkedProcess.finish), slower but correct. The preloaded modules, Dynamo
of the torch installed included, call neither at import (tests/test_forked.py checks); this is the
second line of defence. A child's environment is reset to the
cell's own (forked._child) before its cell runs, so the cell sees the variable only if its
environment has it.

Before each of its forks the server freezes its objects (gc.freeze, the preloaded modules' ~290,000
objects), as Python's gc documentation advises for a process that forks without exec: a child's
collections then skip them, instead of writing to (and so copying) the server's pages, and a child's
`gc.collect()` costs microseconds instead of the 0.13-0.17 s a new interpreter with torch imported
spends there (bench's clean-up after each cell calls it). The hook is inherited by the forked
children, so it checks the pid: a cell that forks (a DataLoader worker, say) freezes nothing of its own.
"""

import gc
import os

os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
_SERVER_PID = os.getpid()


def _freeze_in_the_server() -> None:
    if os.getpid() == _SERVER_PID:
        gc.freeze()


os.register_at_fork(before=_freeze_in_the_server)
