"""Closed-form accounting of the reference transformer LM: parameters, FLOPs, memory.

Conventions (the first assignment's): a (m x n)(n x p) product costs 2mnp FLOPs; fp32
(4 bytes) everywhere; untied embeddings; SwiGLU with three d_model x d_ff matrices; RMSNorm
weights; RoPE has no parameters; no biases. Pure functions, no torch: tests tie them to the
real module (parameter count), to torch's FlopCounterMode (FLOPs) and to the bytes really
saved for backward (activations).

The algebra the writeup prints (A-a, A-c) is written once, with sympy symbols; numbers come
from substituting a config into the same expressions, so the printed formula and the printed
value cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import sympy as sp

from lmreport.presets import Edition, ModelConfig, TrainingTimeQuestion

FP32_BYTES = 4
MIB = 1024**2
GIB = 1024**3

# --- parameters -----------------------------------------------------------------------------


def parameter_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Trainable parameters by component (whole model, all layers)."""
    d, f, n = cfg.d_model, cfg.d_ff, cfg.num_layers
    return {
        "token embedding": cfg.vocab_size * d,
        "attention projections (Q, K, V, O)": n * 4 * d * d,
        "feed-forward (W1, W2, W3)": n * 3 * d * f,
        "RMSNorm weights (2 per block + final)": n * 2 * d + d,
        "LM head (untied)": d * cfg.vocab_size,
    }


def parameter_count(cfg: ModelConfig) -> int:
    return sum(parameter_breakdown(cfg).values())


# --- FLOPs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Matmul:
    """One matrix multiply of the forward pass: (m x n)(n x p), `repeats` times per layer."""

    name: str
    component: str  # group used for the proportions of T-c/T-d
    m: int
    n: int
    p: int
    repeats: int  # independent products per occurrence (batch x heads for attention)
    occurrences: int  # layers it appears in (1 for the LM head)

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.p * self.repeats * self.occurrences


ATTN_PROJ = "attention projections"
ATTN_CORE = "attention scores and weighted sum"
FFN = "feed-forward"
LM_HEAD = "LM head"
COMPONENTS = (ATTN_PROJ, ATTN_CORE, FFN, LM_HEAD)


def forward_matmuls(cfg: ModelConfig, batch: int, ctx: int) -> list[Matmul]:
    """Every matrix multiply of one forward pass over `batch` sequences of `ctx` tokens."""
    d, f, h, dk, L = cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_head, cfg.num_layers
    bt = batch * ctx  # tokens: projections act on the (B*T, D) matrix
    return [
        Matmul("Q projection", ATTN_PROJ, bt, d, d, 1, L),
        Matmul("K projection", ATTN_PROJ, bt, d, d, 1, L),
        Matmul("V projection", ATTN_PROJ, bt, d, d, 1, L),
        Matmul("attention scores Q K^T", ATTN_CORE, ctx, dk, ctx, batch * h, L),
        Matmul("weighted sum of values A V", ATTN_CORE, ctx, ctx, dk, batch * h, L),
        Matmul("output projection", ATTN_PROJ, bt, d, d, 1, L),
        Matmul("FFN W1", FFN, bt, d, f, 1, L),
        Matmul("FFN W3", FFN, bt, d, f, 1, L),
        Matmul("FFN W2", FFN, bt, f, d, 1, L),
        Matmul("LM head", LM_HEAD, bt, d, cfg.vocab_size, 1, 1),
    ]


def forward_flops(cfg: ModelConfig, batch: int = 1, ctx: int | None = None) -> int:
    """Matmul FLOPs of one forward pass (ctx defaults to the model's context length)."""
    return sum(m.flops for m in forward_matmuls(cfg, batch, ctx or cfg.context_length))


def flops_by_component(cfg: ModelConfig, batch: int = 1, ctx: int | None = None) -> dict[str, int]:
    out = dict.fromkeys(COMPONENTS, 0)
    for m in forward_matmuls(cfg, batch, ctx or cfg.context_length):
        out[m.component] += m.flops
    return out


def flop_proportions(cfg: ModelConfig, batch: int = 1, ctx: int | None = None) -> dict[str, float]:
    parts = flops_by_component(cfg, batch, ctx)
    total = sum(parts.values())
    return {k: v / total for k, v in parts.items()}


def backward_flops(cfg: ModelConfig, batch: int = 1, ctx: int | None = None) -> int:
    """Backward of a matmul is two matmuls of the same size (grad wrt input and weight)."""
    return 2 * forward_flops(cfg, batch, ctx)


# AdamW per parameter element, as the course writes it (Loshchilov & Hutter, Alg. 2):
# the bias-corrected step size alpha_t is one scalar per step and not counted per element.
ADAMW_OPS_PER_PARAMETER = (
    ("m <- beta1*m + (1-beta1)*g", 3),  # two multiplies, one add
    ("v <- beta2*v + (1-beta2)*g^2", 4),  # square, two multiplies, one add
    ("theta <- theta - alpha_t*m/(sqrt(v)+eps)", 5),  # sqrt, add, divide, multiply, subtract
    ("theta <- theta - alpha*lambda*theta", 2),  # multiply (alpha*lambda is a scalar), subtract
)
ADAMW_FLOPS_PER_PARAMETER = sum(n for _, n in ADAMW_OPS_PER_PARAMETER)


def adamw_step_flops(cfg: ModelConfig) -> int:
    return ADAMW_FLOPS_PER_PARAMETER * parameter_count(cfg)


def train_step_flops(cfg: ModelConfig, batch: int, ctx: int, backward_to_forward: float = 2.0) -> float:
    return (1 + backward_to_forward) * forward_flops(cfg, batch, ctx) + adamw_step_flops(cfg)


def training_time_s(cfg: ModelConfig, q: TrainingTimeQuestion) -> float:
    """A-d: steps x FLOPs per step / (MFU x peak FLOP/s)."""
    per_step = train_step_flops(cfg, q.batch_size, cfg.context_length, q.backward_to_forward)
    return q.steps * per_step / (q.mfu * q.peak_flops)


# --- memory: the algebra of A-a -------------------------------------------------------------

B, T, V, L, D, H, F = sp.symbols("batch_size context_length vocab_size num_layers d_model num_heads d_ff",
                                 positive=True, integer=True)
SYMBOL_LATEX = {B: "B", T: "T", V: "V", L: "L", D: "d", H: "h", F: "d_{ff}"}


def _values(cfg: ModelConfig, batch: int, ctx: int) -> dict[sp.Symbol, int]:
    return {B: batch, T: ctx, V: cfg.vocab_size, L: cfg.num_layers, D: cfg.d_model,
            H: cfg.num_heads, F: cfg.d_ff}


PARAMETERS_EXPR = 2 * V * D + L * (4 * D**2 + 3 * D * F + 2 * D) + D


@lru_cache(maxsize=None)
def activation_terms(swiglu: bool) -> tuple[tuple[str, sp.Expr], ...]:
    """A-a's activation list, element counts: per block (times L), then the model's head.

    The handout asks to count only these tensors; 2025 lists W1, SiLU, W2; 2026 adds W3 and
    the element-wise product of SwiGLU.
    """
    per_block = [
        ("RMSNorms (2 per block)", 2 * B * T * D),
        ("Q, K, V projections", 3 * B * T * D),
        ("Q K^T scores", B * H * T**2),
        ("softmax", B * H * T**2),
        ("weighted sum of values", B * T * D),
        ("output projection", B * T * D),
        ("W1 product", B * T * F),
        ("SiLU", B * T * F),
    ]
    if swiglu:
        per_block += [("W3 product", B * T * F), ("SiLU(W1 x) * W3 x", B * T * F)]
    per_block += [("W2 product", B * T * D)]
    head = [
        ("final RMSNorm", B * T * D),
        ("output embedding (logits)", B * T * V),
        ("cross-entropy on logits", B * T * V),
    ]
    return tuple((f"{name} (x L)", L * e) for name, e in per_block) + tuple(head)


def activation_elements_expr(swiglu: bool) -> sp.Expr:
    return sp.expand(sum(e for _, e in activation_terms(swiglu)))


def memory_exprs(swiglu: bool, bytes_per_value: int = FP32_BYTES) -> dict[str, sp.Expr]:
    """Bytes of peak AdamW training memory, by part (A-a)."""
    p = bytes_per_value * PARAMETERS_EXPR
    parts = {
        "parameters": p,
        "activations": bytes_per_value * activation_elements_expr(swiglu),
        "gradients": p,
        "optimizer state": 2 * p,  # AdamW keeps m and v, each the size of the parameters
    }
    parts["total"] = sp.expand(sum(parts.values()))
    return parts


def latex(expr: sp.Expr) -> str:
    return sp.latex(sp.factor_terms(expr), symbol_names=SYMBOL_LATEX)


def evaluate(expr: sp.Expr, cfg: ModelConfig, batch: int, ctx: int) -> int:
    return int(expr.subs(_values(cfg, batch, ctx)))


def activation_elements(cfg: ModelConfig, batch: int, ctx: int, swiglu: bool) -> int:
    return evaluate(activation_elements_expr(swiglu), cfg, batch, ctx)


def peak_memory_bytes(cfg: ModelConfig, batch: int, ctx: int, swiglu: bool) -> dict[str, int]:
    return {k: evaluate(e, cfg, batch, ctx) for k, e in memory_exprs(swiglu).items()}


def memory_affine_in_batch(cfg: ModelConfig, ctx: int, swiglu: bool) -> tuple[int, int]:
    """A-b: total bytes = a * batch_size + b."""
    at0 = peak_memory_bytes(cfg, 0, ctx, swiglu)["total"]
    at1 = peak_memory_bytes(cfg, 1, ctx, swiglu)["total"]
    return at1 - at0, at0


def max_batch_size(a: int, b: int, budget_bytes: int) -> int:
    return max(0, math.floor((budget_bytes - b) / a))


def adamw_flops_expr() -> sp.Expr:
    return ADAMW_FLOPS_PER_PARAMETER * PARAMETERS_EXPR


# --- single tensors -------------------------------------------------------------------------


def residual_activation_bytes(batch: int, ctx: int, d_model: int, bytes_per_value: int = FP32_BYTES) -> int:
    """M-d: one (B, T, d_model) tensor of the residual stream."""
    return batch * ctx * d_model * bytes_per_value


def edition_gpt2_xl(ed: Edition) -> ModelConfig:
    return ed.gpt2["GPT-2 XL"]
