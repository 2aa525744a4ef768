"""Imported first by the fork server of forked.py (its PRELOAD list), before torch; never imported elsewhere.

It makes a stray `torch.cuda.is_available()` or `torch.cuda.device_count()` in the server harmless to
the children forked from it: with PYTORCH_NVML_BASED_CUDA_CHECK=1 torch answers them through NVML
instead of the CUDA runtime's `cudaGetDeviceCount`, which calls `cuInit` and so "poisons" forks: a
child forked after it cannot use CUDA. (torch/cuda/__init__.py, is_available(): "The user has set
an env variable to request this availability check that attempts to avoid fork poisoning by using
NVML"; the variable is read when the function is called, so setting it here, in the server only, is
enough.) lmreport's preloaded modules call neither at import; this is the second line of defence.
A child's environment is reset to the cell's own (forked._child) before its cell runs, so the cell
sees the variable only if its environment has it.

Before each fork the server freezes its objects (gc.freeze, the preloaded modules' ~290,000 objects),
as Python's gc documentation advises for a process that forks without exec: a child's collections
then skip them, instead of writing to (and so copying) the server's pages, and a child's
`gc.collect()` costs microseconds instead of the 0.13-0.17 s a new interpreter with torch imported
spends there (bench's clean-up after each cell calls it).
"""

import gc
import os

os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
os.register_at_fork(before=gc.freeze)
