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
"""

import os

os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
