"""The course's reference transformer LM, written here.

Pre-norm blocks `x + attn(ln1(x))` then `+ ffn(ln2(.))`, RMSNorm (eps 1e-5, computed in
fp32), causal multi-head self-attention with separate Q/K/V/output projections and no
biases, RoPE (theta 10000, no parameters), SwiGLU `w2(silu(w1 x) * w3 x)`, final RMSNorm,
untied LM head. Builds on any device, `meta` included (no data-dependent construction).

Attention is a module-level function wrapped in profiler ranges (NVTX for Nsight Systems,
record_function for torch.profiler: timing.profiler_range) so that a profile can split its
time (the profiling questions). The ranges are no-ops without a profiler.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from lmreport.presets import ModelConfig
from lmreport.timing import profiler_range


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * g, computed in fp32 and cast back (as the course does)."""

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        x = x.float()  # x^2 overflows fp16 beyond |x| ~ 256; the mean needs fp32 accumulation
        rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * rms * self.weight).to(in_dtype)


def rope_cos_sin(d_head: int, positions: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (T, d_head/2) for rotating pairs (2i, 2i+1) by position * theta^(-2i/d)."""
    inv_freq = theta ** (-torch.arange(0, d_head, 2, device=positions.device, dtype=torch.float32) / d_head)
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, d_head/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each adjacent pair of features of x (..., T, d_head)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., T, d_head/2) each
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def _profiler_range(name: str):
    """A profiler range (NVTX, and record_function while torch.profiler records) in eager mode;
    nothing while torch.compile traces.

    Dynamo cannot trace `nvtx.annotate` (a Cython context manager), nor the generator-based
    context manager around it: each range would be a graph break, so a compiled attention
    would run as eager fragments. Under compilation the range is dropped, which leaves one
    graph (checked in tests/test_attention.py); a compiled model's kernels then fall in the
    phase ranges ("forward", ...) that timing.py opens outside the compiled code.
    """
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return profiler_range(name)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)) V with an optional boolean mask (True = attend).

    q, k: (..., T, d_k); v: (..., T, d_v). Materialises the (..., T, T) scores: the memory
    the attention section measures.
    """
    with _profiler_range("scaled dot product attention"):
        d_k = q.shape[-1]
        with _profiler_range("computing attention scores"):
            scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
        with _profiler_range("computing softmax"):
            probs = torch.softmax(scores, dim=-1)
        with _profiler_range("final matmul"):
            return probs @ v  # (..., T, d_v)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, device=None, dtype=None):
        super().__init__()
        assert d_model % num_heads == 0, "d_model must be a multiple of num_heads"
        self.num_heads = num_heads
        kw = dict(bias=False, device=device, dtype=dtype)
        self.q_proj = nn.Linear(d_model, d_model, **kw)
        self.k_proj = nn.Linear(d_model, d_model, **kw)
        self.v_proj = nn.Linear(d_model, d_model, **kw)
        self.output_proj = nn.Linear(d_model, d_model, **kw)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, H, T, D/H)
            return y.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)

        q = apply_rope(heads(self.q_proj(x)), cos, sin)
        k = apply_rope(heads(self.k_proj(x)), cos, sin)
        v = heads(self.v_proj(x))
        y = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T, D/H)
        return self.output_proj(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int, device=None, dtype=None):
        super().__init__()
        kw = dict(bias=False, device=device, dtype=dtype)
        self.w1 = nn.Linear(d_model, d_ff, **kw)
        self.w2 = nn.Linear(d_ff, d_model, **kw)
        self.w3 = nn.Linear(d_model, d_ff, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.ln1 = RMSNorm(cfg.d_model, device=device, dtype=dtype)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.num_heads, device=device, dtype=dtype)
        self.ln2 = RMSNorm(cfg.d_model, device=device, dtype=dtype)
        self.ffn = SwiGLU(cfg.d_model, cfg.d_ff, device=device, dtype=dtype)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.ln1(x), cos, sin, mask)
        return x + self.ffn(self.ln2(x))


class TransformerLM(nn.Module):
    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        self.token_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(TransformerBlock(cfg, device, dtype) for _ in range(cfg.num_layers))
        self.ln_final = RMSNorm(cfg.d_model, device=device, dtype=dtype)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False, device=device, dtype=dtype)
        if self.lm_head.weight.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Truncated normal init as in the course (std 0.02 is enough for timing and memory)."""
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.trunc_normal_(p, std=0.02, a=-0.06, b=0.06)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids (B, T) -> logits (B, T, V)."""
        t = token_ids.shape[-1]
        if t > self.cfg.context_length:
            raise ValueError(f"sequence of {t} tokens exceeds context_length {self.cfg.context_length}")
        positions = torch.arange(t, device=token_ids.device)
        cos, sin = rope_cos_sin(self.cfg.d_head, positions, self.cfg.rope_theta)  # shared by all layers
        mask = torch.ones(t, t, dtype=torch.bool, device=token_ids.device).tril()  # causal
        x = self.token_embeddings(token_ids)  # (B, T, D)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.ln_final(x))


def build_model(cfg: ModelConfig, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                context_length: int | None = None) -> TransformerLM:
    """The LM for `cfg`, its RoPE sized for `context_length` when given."""
    if context_length is not None:
        cfg = cfg.with_(context_length=context_length)
    return TransformerLM(cfg, device=device, dtype=dtype)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
