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


# The components of parameter_breakdown, in its order (conformance.py places a module's parameters in them).
TOKEN_EMBEDDING = "token embedding"
ATTENTION_PROJECTIONS = "attention projections (Q, K, V, O)"
FEED_FORWARD_WEIGHTS = "feed-forward (W1, W2, W3)"
NORM_WEIGHTS = "RMSNorm weights (2 per block + final)"
LM_HEAD_WEIGHTS = "LM head (untied)"
PARAMETER_COMPONENTS = (TOKEN_EMBEDDING, ATTENTION_PROJECTIONS, FEED_FORWARD_WEIGHTS, NORM_WEIGHTS, LM_HEAD_WEIGHTS)


def parameter_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Trainable parameters by component (whole model, all layers)."""
    d, f, n = cfg.d_model, cfg.d_ff, cfg.num_layers
    return {
        TOKEN_EMBEDDING: cfg.vocab_size * d,
        ATTENTION_PROJECTIONS: n * 4 * d * d,
        FEED_FORWARD_WEIGHTS: n * 3 * d * f,
        NORM_WEIGHTS: n * 2 * d + d,
        LM_HEAD_WEIGHTS: d * cfg.vocab_size,
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


# Softmax over the attention scores, per element of the (B, h, T, T) score tensor: compare with
# the row maximum, subtract it, exponentiate, add into the row sum, divide by the sum. Five
# FLOPs, counting the exponential as one, a convention as 2mnp is for matmuls. The two
# attention matmuls cost 2 d_k per score element each, so each is 2 d_k / 5 times the softmax.
SOFTMAX_FLOPS_PER_SCORE = 5


def attention_softmax_flops(cfg: ModelConfig, batch: int = 1, ctx: int | None = None) -> int:
    """FLOPs of the softmax over the attention scores, all layers of one forward pass."""
    t = ctx or cfg.context_length
    return SOFTMAX_FLOPS_PER_SCORE * batch * cfg.num_heads * t * t * cfg.num_layers


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


def training_state_bytes(cfg: ModelConfig, bytes_per_value: int = FP32_BYTES) -> int:
    """A-a without the activations: parameters, gradients and AdamW's m and v (4 values per parameter)."""
    return 4 * bytes_per_value * parameter_count(cfg)


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


# --- attention scaling study (attention section: At-a, C-a) ---------------------------------
#
# The handout's benchmark: one attention without a head dimension, Q, K, V of shape (B, T, d)
# in fp32 (d is the symbol D), and, for the model's own attention, the causal mask as
# TransformerLM.forward builds it: a (T, T) bool tensor, 1 byte per element. Each term is one
# tensor; tests/test_attention.py checks the "saved" terms against the storages autograd keeps
# (saved_tensors_hooks), the live totals against a tracker of live operator outputs, and the
# CUDA peak against the records of a real H200 run (../shared/samples/h200).

BOOL_BYTES = 1
ATTN_SAVED = "saved for backward"
ATTN_IN_USE = "also in use before backward"
ATTN_BACKWARD = "added at the backward peak"
ATTN_GROUPS = (ATTN_SAVED, ATTN_IN_USE, ATTN_BACKWARD)
ATTN_END = "live when backward ends"
ATTN_DEVICES = ("cuda", "cpu")  # whose kernels the eager formula follows (they differ in one temporary)


@dataclass(frozen=True)
class MemoryTerm:
    name: str
    group: str  # one of ATTN_GROUPS
    bytes: sp.Expr  # in B, T and D
    device: str | None = None  # None: on every device; "cuda": a temporary only CUDA's kernel allocates


@dataclass(frozen=True)
class KernelTemporary:
    """A tensor a kernel allocates inside its C++ body, below the dispatcher.

    Neither a TorchDispatchMode (experiments/attention.py: LiveBytes) nor a meta kernel sees it: the
    operator's outputs are all they see. Estimating for that device, the tracker adds a tensor shaped
    like argument `like_arg` of `op` while the operator runs (the same bytes as the term `term`).
    """

    op: str  # the aten operator, e.g. "aten::_softmax_backward_data"
    like_arg: int  # the temporary has this argument's shape and dtype
    device: str
    term: str  # the MemoryTerm (attention_memory_terms) this temporary is
    source: str  # where PyTorch allocates it


# softmax's backward on CUDA first multiplies the incoming gradient by the output into a new tensor,
# then runs its kernel on that product (aten/src/ATen/native/cuda/SoftMax.cu, softmax_backward_cuda_out:
# `Tensor tmp = grad * output; host_softmax_backward<...>(tmp, output, dim, half_to_float, grad_input);`
# SoftMaxBackwardEpilogue's comment: "gradOutput that we get here is really gradOutput * output"). So
# while it runs, CUDA holds P, dP, the product dP*P and the result dS: four T x T matrices. The CPU kernel
# (aten/src/ATen/native/SoftMax.cpp, softmax_backward_cpu_out -> softmax_backward_lastdim_kernel) sums
# dP*P row by row into registers and writes dS directly: three. The H200 records show exactly one
# B*T^2 fp32 matrix more than the three-matrix formula at every (d, T) (tests/test_attention_h200.py).
# The other candidates allocate nothing hidden: masked_fill's backward is `grad.masked_fill(mask, 0)`
# and the division's `grad / other` (tools/autograd/derivatives.yaml), operator outputs a tracker sees;
# bmm's backward multiplies transposed views (P^T, K, Q^T), which prepare_batch_matrix_for_cublas
# (aten/src/ATen/native/cuda/Blas.cpp) passes to cuBLAS as transposed operands, without a contiguous copy.
SOFTMAX_BACKWARD_PRODUCT = "dP ⊙ P, the product CUDA's softmax backward writes first (SoftMax.cu)"
CUDA_KERNEL_TEMPORARIES = (
    KernelTemporary("aten::_softmax_backward_data", 0, "cuda", SOFTMAX_BACKWARD_PRODUCT,
                    "aten/src/ATen/native/cuda/SoftMax.cu, softmax_backward_cuda_out: Tensor tmp = grad * output"),
)


def kernel_temporaries(device: str) -> dict[str, KernelTemporary]:
    """aten operator -> the temporary its kernel allocates on this device (none on CPU or meta)."""
    return {k.op: k for k in CUDA_KERNEL_TEMPORARIES if k.device == device}


def _check_device(device: str) -> None:
    if device not in ATTN_DEVICES:
        raise ValueError(f"unknown device {device!r} for the attention formulas: choose one of {', '.join(ATTN_DEVICES)}")


def attention_memory_terms(fused: bool = False, device: str = "cuda") -> tuple[MemoryTerm, ...]:
    """Bytes of each tensor of one attention forward + backward, by when it is live.

    Eager (lmreport.model.scaled_dot_product_attention with the causal mask): the product
    Q K^T saves Q and K, not its output; the division by sqrt(d) saves only the scalar; the
    masked_fill saves the negated mask; softmax saves its output P, which P V saves again
    (one storage). So the T x T scores are not kept, P is. During backward, the gradient of P
    and that of the scores are live at the same time as P (softmax's backward needs P, dP and
    writes dS), and on CUDA also the product dP * P that its kernel computes first
    (CUDA_KERNEL_TEMPORARIES): four T x T matrices on CUDA, three on a CPU. When T is not much
    larger than d, the peak is rather the end of backward (`attention_end_of_backward_terms`).

    Fused (FlashAttention-2, Dao 2023, Algorithms 1-2; the memory-efficient kernel alike): the
    scores are computed tile by tile in on-chip memory and never written; the kernel keeps
    the output O and one log-sum-exp per row, and its backward recomputes P tile by tile.
    Nothing of size T^2 is stored.
    """
    _check_device(device)
    f = FP32_BYTES
    if fused:
        return (
            MemoryTerm("Q, K, V (inputs of the fused kernel)", ATTN_SAVED, f * 3 * B * T * D),
            MemoryTerm("output O", ATTN_SAVED, f * B * T * D),
            MemoryTerm("log-sum-exp of each score row", ATTN_SAVED, f * B * T),
            MemoryTerm("gradient of the output dO", ATTN_IN_USE, f * B * T * D),
        )
    terms = (
        MemoryTerm("Q and K, saved by the scores product Q Kᵀ", ATTN_SAVED, f * 2 * B * T * D),
        MemoryTerm("V, saved by the product P V", ATTN_SAVED, f * B * T * D),
        MemoryTerm("softmax output P, saved by softmax and by P V", ATTN_SAVED, f * B * T**2),
        MemoryTerm("negated causal mask, saved by masked_fill", ATTN_SAVED, BOOL_BYTES * T**2),
        MemoryTerm("causal mask (bool)", ATTN_IN_USE, BOOL_BYTES * T**2),
        MemoryTerm("output O", ATTN_IN_USE, f * B * T * D),
        MemoryTerm("gradient of the output dO", ATTN_IN_USE, f * B * T * D),
        MemoryTerm("gradient of V", ATTN_BACKWARD, f * B * T * D),
        MemoryTerm("gradient of P", ATTN_BACKWARD, f * B * T**2),
        MemoryTerm(SOFTMAX_BACKWARD_PRODUCT, ATTN_BACKWARD, f * B * T**2, device="cuda"),
        MemoryTerm("gradient of the scores", ATTN_BACKWARD, f * B * T**2),
    )
    return tuple(t for t in terms if t.device in (None, device))


def attention_inputs_expr(fused: bool = False) -> sp.Expr:
    """What exists before the forward: Q, K, V, the output gradient dO (fp32) and, eager, the bool mask.

    A measurement's baseline: on CUDA, `memory_allocated` before the forward holds these plus
    what the process allocated before (the cuBLAS workspace, ...), which no formula here counts.
    """
    return FP32_BYTES * 4 * B * T * D + (0 if fused else BOOL_BYTES * T**2)


def attention_end_of_backward_terms() -> tuple[MemoryTerm, ...]:
    """Eager: what is live as the last gradient lands, once every T x T tensor is freed.

    The gradient of K comes out of Q K^T's backward transposed; AccumulateGrad copies it into
    K's contiguous layout (the gradient layout contract, torch/csrc/autograd/functions/
    accumulate_grad.h), so for a moment it exists twice.
    """
    f = FP32_BYTES
    return (
        MemoryTerm("Q, K, V", ATTN_END, f * 3 * B * T * D),
        MemoryTerm("causal mask (bool)", ATTN_END, BOOL_BYTES * T**2),
        MemoryTerm("output O and its gradient dO", ATTN_END, f * 2 * B * T * D),
        MemoryTerm("gradients of Q, K, V", ATTN_END, f * 3 * B * T * D),
        MemoryTerm("transposed gradient of K, before its contiguous copy", ATTN_END, f * B * T * D),
    )


def attention_memory_exprs(fused: bool = False, device: str = "cuda") -> dict[str, sp.Expr]:
    """Bytes: saved for backward, in use before backward, and (eager) the backward peak.

    The peak is the larger of two moments: softmax's backward (four T x T matrices live on
    CUDA, three on a CPU) and the end of backward (only (B, T, d) tensors and the mask).
    """
    terms = attention_memory_terms(fused, device)

    def upto(groups):
        return sp.expand(sum(t.bytes for t in terms if t.group in groups))

    out = {"inputs": sp.expand(attention_inputs_expr(fused)),
           "saved": upto(ATTN_GROUPS[:1]), "in_use_before_backward": upto(ATTN_GROUPS[:2])}
    if not fused:
        out["softmax_backward_live"] = upto(ATTN_GROUPS)
        out["end_of_backward_live"] = sp.expand(sum(t.bytes for t in attention_end_of_backward_terms()))
        out["backward_peak"] = sp.Max(out["softmax_backward_live"], out["end_of_backward_live"])
    return out


def _attention_values(batch: int, seq_len: int, d: int) -> dict[sp.Symbol, int]:
    return {B: batch, T: seq_len, D: d}


def attention_memory_bytes(batch: int, seq_len: int, d: int, fused: bool = False, device: str = "cuda") -> dict[str, int]:
    vals = _attention_values(batch, seq_len, d)
    return {k: int(e.subs(vals)) for k, e in attention_memory_exprs(fused, device).items()}


def attention_term_bytes(batch: int, seq_len: int, d: int, fused: bool = False,
                         end_of_backward: bool = False, device: str = "cuda") -> list[tuple[MemoryTerm, int]]:
    """Each term with its bytes: attention_memory_terms(fused, device), or attention_end_of_backward_terms()."""
    vals = _attention_values(batch, seq_len, d)
    terms = attention_end_of_backward_terms() if end_of_backward else attention_memory_terms(fused, device)
    return [(t, int(t.bytes.subs(vals))) for t in terms]
