"""What one measured step does, shared by the bench, nsys and memory sections.

A workload is the run's LM at one size (lmreport's reference, or the user's `--model`, built by
user_model.build), a random batch of token ids, the loss, and (for training) the optimizer. Its `step(phase)` runs one step of a mode and wraps each phase in
`with phase(name):`, so the same code is timed (timing.time_phases), profiled (the phase
names are the NVTX ranges nsys filters on) and memory-profiled (snapshots, estimation on
fake tensors).

Modes:
- "forward": inference, logits only, under torch.no_grad(): activations are freed as they go.
- "forward_backward": forward + cross-entropy loss ("forward" phase), then loss.backward()
  ("backward" phase); gradients are set to None before each step.
- "train": forward_backward followed by the AdamW update ("optimizer step" phase). The
  optimizer state (m, v) is allocated at the first step; later steps reuse it.

Precision: "fp32", or "bf16"/"fp16" autocast around forward and loss (backward runs outside
autocast, as torch.autocast recommends); the weights stay fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lmreport import model_cache, user_model
from lmreport.presets import WORKLOAD_PHASES as PHASES
from lmreport.presets import ModelConfig
from lmreport.timing import untimed_phase

MODES = tuple(PHASES)  # forward, forward_backward, train; their phases are named in presets.py
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Workload:
    model: nn.Module  # the LM, or its torch.compile wrapper
    optimizer: torch.optim.Optimizer | None  # only in mode "train"
    inputs: torch.Tensor  # (B, T) token ids
    targets: torch.Tensor  # (B, T) next-token ids
    mode: str
    device: str
    dtype: str  # "fp32", "bf16" or "fp16" (autocast)
    loss_fn: Callable = F.cross_entropy  # (logits (N, V), targets (N,)) -> scalar

    def autocast(self):
        low = AUTOCAST_DTYPES[self.dtype]
        if low is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=low)

    def step(self, phase: Callable[[str], contextlib.AbstractContextManager] = untimed_phase) -> None:
        """One step of the workload's mode; each phase runs inside `phase(name)`."""
        if self.mode == "forward":
            with torch.no_grad(), phase("forward"), self.autocast():
                self.model(self.inputs)
            return
        self.model.zero_grad(set_to_none=True)
        with phase("forward"), self.autocast():
            logits = self.model(self.inputs)  # (B, T, V)
            loss = self.loss_fn(logits.flatten(0, 1), self.targets.flatten())
        del logits
        with phase("backward"):
            loss.backward()
        if self.optimizer is not None:
            with phase("optimizer step"):
                self.optimizer.step()

    @property
    def tokens(self) -> int:
        return self.inputs.numel()


def make_workload(cfg: ModelConfig, batch: int, ctx: int, mode: str, device: str = "cpu", dtype: str = "fp32",
                  compile: bool = False, seed: int = 0, spec: user_model.ModelSpec | None = None) -> Workload:
    """The model of spec (None: lmreport's) for cfg on device (RoPE sized for ctx), a random batch, the
    optimizer for "train"."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(AUTOCAST_DTYPES)}")
    gen = torch.Generator().manual_seed(seed)
    model_cfg = cfg.with_(context_length=max(ctx, cfg.context_length))  # RoPE sized for ctx
    spec = spec or user_model.reference()

    def build() -> nn.Module:
        return user_model.build(spec, model_cfg, device)
    # A worker process keeps the model for the next cell of the same key (model_cache.py): the implementation
    # (its targets and source hashes), the config and the device. Training and compiling take it, so those
    # cells never hand on weights they changed or a module a compiler wrapped.
    model = model_cache.model_for(model_cache.key(user_model.build, (spec, model_cfg), device), build,
                                  take=mode == "train" or compile, device=device)
    if torch.device(device).type != "meta":
        ids = torch.randint(cfg.vocab_size, (batch, ctx + 1), generator=gen)
    else:
        ids = torch.zeros(batch, ctx + 1, dtype=torch.long)
    ids = ids.to(device)
    optimizer = user_model.make_optimizer(spec, model.parameters()) if mode == "train" else None
    runnable = torch.compile(model) if compile else model
    return Workload(runnable, optimizer, ids[:, :-1].contiguous(), ids[:, 1:].contiguous(), mode, device, dtype,
                    user_model.loss_function(spec))
