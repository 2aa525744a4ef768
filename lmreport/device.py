"""Device facts: what ran a cell, how to wait for it, how much memory it holds.

Everything here works without CUDA; CUDA calls are guarded so CPU machines and CI run the
whole pipeline.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import re
import socket
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _torch_build_for_gpu() -> bool | None:
    """Whether the installed torch was built for CUDA or ROCm, read from torch/version.py without
    importing torch (None when that file cannot say: then torch is asked)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return None
    # torch/version.py (generated at build time): `cuda: Optional[str] = None` or `= '12.6'`, the same for hip
    builds = dict(re.findall(r"^(cuda|hip)\s*(?::[^=\n]*)?=\s*(\S.*?)\s*$", text, re.MULTILINE))
    if builds.keys() != {"cuda", "hip"}:
        return None
    return builds != {"cuda": "None", "hip": "None"}


def cuda_available() -> bool:
    # The default profile of every command depends on this answer; a CPU-only build of torch never
    # sees a GPU, so importing it (about 2 s) to ask would only slow `lmreport render` down.
    if _torch_build_for_gpu() is False:
        return False
    try:
        import torch
    except ImportError:  # rendering never needs torch
        return False
    return torch.cuda.is_available()


def default_device() -> str:
    return "cuda" if cuda_available() else "cpu"


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    """Human name of a device, e.g. 'NVIDIA H100 80GB HBM3' or 'CPU: AMD EPYC ... (2 threads)'."""
    if device.startswith("cuda"):
        import torch
        return torch.cuda.get_device_name(torch.device(device))
    import torch
    return f"CPU: {cpu_name()} ({torch.get_num_threads()} threads)"


def synchronize(device: str) -> None:
    """Wait for queued kernels: CUDA launches are asynchronous, CPU ops are not."""
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize(torch.device(device))


@functools.lru_cache(maxsize=None)
def git_info() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment(device: str | None = None) -> dict:
    """The `environment` block of a record: which machine and software produced it."""
    import torch
    device = device or default_device()
    return {
        "device": device_name(device),
        "device_type": device.split(":")[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.startswith("cuda") else None,
        "python": platform.python_version(),
        "git": git_info(),
        "host": socket.gethostname(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        # Which of the host's GPUs (set per worker by --executor local-gpus, and by Slurm).
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
