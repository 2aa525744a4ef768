"""Activation checkpointing of the reference model, and what one block saves for backward.

`checkpointed_layers(model, k)` regroups the model's blocks k at a time, each group run under
torch.utils.checkpoint (non-reentrant): a group keeps only its input for backward and
recomputes its blocks' activations when backward reaches it. TransformerLM.forward just
iterates `self.layers`, so swapping that list is the whole change; the blocks (and their
parameters) are the same objects, and the list is restored afterwards.

Single-level checkpointing with groups of k blocks out of L keeps L/k group inputs
(B*T*d each) plus, during backward, one group's recomputed activations (k blocks' worth), so
memory ~ (L/k)*a + k*b with a = bytes of a block input and b = bytes one block saves; the
best k is about sqrt(L*a/b), and memory grows as sqrt(L) (Chen et al. 2016, "Training Deep
Nets with Sublinear Memory Cost", arXiv:1604.06174). Checkpointing recursively (Griewank &
Walther's binomial schedule) brings memory to O(log L) for O(L log L) recomputation.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmreport.model import TransformerBlock, rope_cos_sin
from lmreport.presets import ModelConfig
from lmreport.saved_tensors import measure_saved_bytes, saved_by_node


class CheckpointedGroup(nn.Module):
    """k consecutive blocks run under one activation checkpoint."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x, cos, sin, mask):
        def run(y):
            for b in self.blocks:
                y = b(y, cos, sin, mask)
            return y
        # no RNG in the model (no dropout), and fake tensors cannot snapshot a real RNG state
        return checkpoint(run, x, use_reentrant=False, preserve_rng_state=False)


@contextlib.contextmanager
def checkpointed_layers(model, every: int | None):
    """Within the block, model.layers runs in checkpointed groups of `every` blocks (None: as is)."""
    if not every:
        yield model
        return
    original = model.layers
    blocks = list(original)
    model.layers = nn.ModuleList(CheckpointedGroup(blocks[i:i + every]) for i in range(0, len(blocks), every))
    try:
        yield model
    finally:
        model.layers = original


def block_saved(cfg: ModelConfig, batch: int, ctx: int, top: int = 5) -> dict:
    """What one transformer block saves for backward (fp32, on meta): total, by autograd node, its gradients."""
    with torch.device("meta"):
        block = TransformerBlock(cfg)
        x = torch.empty(batch, ctx, cfg.d_model, requires_grad=True)
        cos, sin = rope_cos_sin(cfg.d_head, torch.arange(ctx), cfg.rope_theta)
        mask = torch.ones(ctx, ctx, dtype=torch.bool).tril()
    out, saved = measure_saved_bytes(lambda: block(x, cos, sin, mask), block.parameters())
    nodes = saved_by_node(out, block.parameters())
    params = sum(p.numel() for p in block.parameters())
    ranked = nodes.bytes_by_node.most_common()
    return {"saved_activation_bytes": saved.activation_bytes, "saved_parameter_bytes": saved.parameter_bytes,
            "by_node_bytes": dict(ranked), "top_nodes": [{"node": n, "bytes": b} for n, b in ranked[:top]],
            "block_input_bytes": 4 * batch * ctx * cfg.d_model,
            "block_parameters": params, "gradient_bytes": 4 * params}
