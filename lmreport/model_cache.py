"""A built model kept for the next cell of the same process (on in the worker launcher only).

Building a model costs its allocation and initialisation. A long-lived worker running the bench
grid can build each size once and hand the same module to every mode, context and precision of
that size: the weights are fp32 in every mode (autocast makes the bf16 copies on the fly, per
step) and RoPE is computed in each forward from the configured context_length, which is part of
the key. The rules that keep a reused model as good as a fresh one:

- the key is everything that defines the module: the builder (its module and qualified name),
  its config (a frozen dataclass, context length included) and the device. A caller building
  another model class passes its own builder, so it gets another key (`key(builder, config, device)`);
- one model at a time: asking for another key drops the kept model first, so the process holds
  what a fresh one would (one model) when the next one is built;
- a workload that changes the weights (train: the optimizer steps) or wraps the module
  (torch.compile) takes the model out of the cache: later cells get a fresh build, never weights
  an earlier cell trained or a module a compiled wrapper's guards have seen;
- before a kept model is handed out again its gradients are set to None and its training flag is
  the one it was built with;
- nothing is kept under a fake-tensor mode or on `meta` (shapes only, nothing to save), and no kept
  model (real weights) is handed out there either; nothing is kept while
  the cache is disabled, which is the default: the inline and subprocess launchers build every
  cell's model as before.
"""

from __future__ import annotations

from typing import Callable, Hashable

_enabled = False
_kept: tuple[Hashable, object, bool] | None = None  # (key, module, training flag when built)
builds = 0  # models built through model_for in this process (the worker reports it; tests count it)


def enable(on: bool = True) -> None:
    """Keep models between cells of this process (worker launcher); off drops the kept one."""
    global _enabled
    _enabled = on
    if not on:
        clear()


def clear() -> None:
    global _kept
    _kept = None


def key(builder: Callable, config: Hashable, device: str) -> tuple:
    """What defines a built module: who builds it, from which config, on which device."""
    return (f"{builder.__module__}.{builder.__qualname__}", config, str(device))


def _shapes_only(device: str) -> bool:
    if str(device).startswith("meta"):
        return True
    from torch._guards import detect_fake_mode
    return detect_fake_mode() is not None


def model_for(model_key: Hashable, build: Callable[[], object], take: bool = False, device: str = "cpu"):
    """The kept module for model_key (reset), or a new one from build(); `take` leaves none kept."""
    global _kept, builds
    if _kept is not None and (_kept[0] != model_key or not _enabled):
        _kept = None  # one model at a time: the old one is freed before the next is built
    shapes_only = _shapes_only(device)
    if _kept is not None and not shapes_only:  # never real weights to a fake-tensor mode (its key can be "cpu")
        _, model, training = _kept
        if take:
            _kept = None
        model.zero_grad(set_to_none=True)
        model.train(training)
        return model
    model = build()
    builds += 1
    if _enabled and not take and not shapes_only:
        _kept = (model_key, model, model.training)
    return model
