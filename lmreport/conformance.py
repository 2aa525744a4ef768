"""Does a model match the accounting? Its parameters by component, and the likely cause of a difference.

The accounting (accounting.py) describes the course's architecture. A user's model (`--model`)
is checked against it on `meta` (experiments/accounting.py): its parameters are placed in the
formula's components by shape and name (`component_of`), its forward FLOPs are counted by
FlopCounterMode. Where the numbers differ, `diagnose` looks for the causes whose predicted
differences add up exactly to the observed ones (per component and in FLOPs): tied embeddings
take V*d from the LM head, biases add d per projection, a different d_ff moves the feed-forward
by 3*d*delta*L parameters and 6*B*T*d*delta*L FLOPs, and so on. The causes are derived from the
numbers, never assumed.

Pure functions on numbers and names: no torch, so rendering stays fast.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Iterable

from lmreport import accounting as acc
from lmreport.presets import ModelConfig

# The formula's components (accounting.parameter_breakdown's), then three it has not.
EMBEDDING, ATTENTION, FEED_FORWARD, NORMS, LM_HEAD = (acc.TOKEN_EMBEDDING, acc.ATTENTION_PROJECTIONS,
                                                     acc.FEED_FORWARD_WEIGHTS, acc.NORM_WEIGHTS, acc.LM_HEAD_WEIGHTS)
BIASES = "biases"
ROPE = "RoPE (as parameters)"
OTHER = "not placed"
COMPONENTS = (EMBEDDING, ATTENTION, FEED_FORWARD, NORMS, LM_HEAD, BIASES, ROPE, OTHER)

_ATTENTION_NAMES = re.compile(r"attn|attention|q_proj|k_proj|v_proj|o_proj|qkv|query|key|value|\bw[qkvo]\b")
_FFN_NAMES = re.compile(r"ffn|mlp|feed|\bw[123]\b|\bfc|up_proj|down_proj|gate")
_ROPE_NAMES = re.compile(r"rope|rotary|freq|theta|\bcos\b|\bsin\b")
_EMBEDDING_NAMES = re.compile(r"emb|wte|\btok")
MAX_CAUSES = 4  # the largest combination of causes tried


def component_of(name: str, shape: Iterable[int], cfg: ModelConfig) -> str:
    """The component a parameter belongs to, from its shape first and its name where shapes are ambiguous.

    (V, d) or (d, V): the token embedding when its name says so, else the LM head; a matrix with one
    side d: attention when named so or square (or a fused 2d/3d projection), else the feed-forward; a
    vector of d: a norm's weight; anything named `bias`: a bias; RoPE names: RoPE."""
    n, shape = name.lower(), tuple(shape)
    d, v = cfg.d_model, cfg.vocab_size
    if n.rsplit(".", 1)[-1] in ("bias", "b") or n.endswith("_bias"):
        return BIASES
    if _ROPE_NAMES.search(n):
        return ROPE
    if len(shape) == 2 and v in shape and d in shape:
        return EMBEDDING if _EMBEDDING_NAMES.search(n) else LM_HEAD
    if len(shape) == 2 and d in shape:
        if _ATTENTION_NAMES.search(n):
            return ATTENTION
        if _FFN_NAMES.search(n):
            return FEED_FORWARD
        other = shape[0] if shape[1] == d else shape[1]
        return ATTENTION if other in (d, 2 * d, 3 * d) else FEED_FORWARD
    if len(shape) == 1 and shape[0] == d:
        return NORMS
    return OTHER


def parameters_by_component(named_shapes: Iterable[tuple[str, tuple[int, ...]]], cfg: ModelConfig) -> dict:
    """{"counts": component -> parameters, "matrices": component -> 2-D tensors, "unplaced": names} over
    (name, shape) pairs (model.named_parameters() names a tied tensor once)."""
    counts, matrices = dict.fromkeys(COMPONENTS, 0), dict.fromkeys(COMPONENTS, 0)
    unplaced = []
    for name, shape in named_shapes:
        comp = component_of(name, shape, cfg)
        numel = 1
        for s in shape:
            numel *= s
        counts[comp] += numel
        matrices[comp] += len(shape) == 2
        if comp == OTHER:
            unplaced.append(f"{name} {tuple(shape)}")
    return {"counts": counts, "matrices": matrices, "unplaced": unplaced}


def formula_by_component(cfg: ModelConfig) -> dict[str, int]:
    return {**dict.fromkeys(COMPONENTS, 0), **acc.parameter_breakdown(cfg)}


# --- causes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cause:
    """A known way to differ from the course's architecture, with the differences it predicts."""

    text: str  # what it is, in words
    size: str  # its predicted parameter difference as a formula ("−V·d"), or its FLOPs where it has no parameters
    parameters: dict = field(default_factory=dict)  # component -> predicted parameter difference
    flops: int = 0  # predicted difference in forward FLOPs (FlopCounterMode counts matmuls only)

    def parameter_total(self) -> int:
        return sum(self.parameters.values())


def candidate_causes(cfg: ModelConfig, batch: int, ctx: int, observed: dict[str, int],
                     matrices: dict[str, int] | None = None) -> list[Cause]:
    """The causes lmreport knows, sized for this config; observed (component -> module's count) sizes the
    ones with a free parameter (a different d_ff, RoPE parameters). matrices (component -> 2-D tensors)
    tells a feed-forward of two matrices per layer from one of three where the counts alone cannot
    (3·d·Δ·L = −d·d_ff·L when Δ = −d_ff/3)."""
    d, f, L, V, dk = cfg.d_model, cfg.d_ff, cfg.num_layers, cfg.vocab_size, cfg.d_head
    bt = batch * ctx
    formula = formula_by_component(cfg)
    ffn_matrices = (matrices or {}).get(FEED_FORWARD)
    two, three = ffn_matrices in (None, 2 * L), ffn_matrices in (None, 3 * L)
    causes = [
        Cause("tied embeddings: the LM head reuses the token-embedding matrix (its matmul still runs)", "−V·d",
              {LM_HEAD: -V * d}),
        Cause("biases on the Q, K, V and output projections", "+4·d·L", {BIASES: 4 * d * L}),
        Cause("biases on the feed-forward matrices", "+(2·d_ff + d)·L", {BIASES: (2 * f + d) * L}),
        Cause("a bias on the LM head", "+V", {BIASES: V}),
        Cause("norms with a bias (LayerNorm instead of RMSNorm)", "+(2L + 1)·d", {BIASES: (2 * L + 1) * d}),
        Cause("no final norm", "−d", {NORMS: -d}),
        *([Cause("a two-matrix feed-forward (no W3)", "−d·d_ff·L", {FEED_FORWARD: -d * f * L},
                 -2 * bt * d * f * L)] if two else []),
        Cause("RoPE applied as a (d_k × d_k) matrix product on Q and K", "+4·B·T·d·d_k·L FLOPs", {},
              4 * bt * d * dk * L),
    ]
    rope = observed.get(ROPE, 0)
    if rope:
        causes.append(Cause(f"RoPE kept as {rope:,} trainable parameters (RoPE has none)", f"+{rope:,}", {ROPE: rope}))
    ffn = observed.get(FEED_FORWARD, 0) - formula[FEED_FORWARD]
    if ffn and three and ffn % (3 * d * L) == 0:
        delta = ffn // (3 * d * L)
        if f + delta > 0:
            causes.append(Cause(f"d_ff = {f + delta:,} instead of {f:,}", f"3·d·Δ·L with Δ = {delta:+,}".replace("-", "−"),
                                {FEED_FORWARD: ffn}, 6 * bt * d * delta * L))
    if ffn and two and (ffn + 3 * d * f * L) % (2 * d * L) == 0:
        width = (ffn + 3 * d * f * L) // (2 * d * L)
        if width > 0 and width != f:
            causes.append(Cause(f"a two-matrix feed-forward of width {width:,} (no W3)", "2·d·w·L − 3·d·d_ff·L",
                                {FEED_FORWARD: ffn}, 4 * bt * d * width * L - 6 * bt * d * f * L))
    return causes


@dataclass
class Diagnosis:
    rows: list[dict]  # component, formula, module, difference (components where either is non-zero)
    parameter_difference: int  # module - formula
    flop_difference: int | None  # FlopCounterMode - formula (None: not counted)
    causes: list[Cause]  # the combination that explains the differences ([] when nothing differs or none fits)
    explains_parameters: bool
    explains_flops: bool
    unplaced: list[str]
    alternatives: list[list[Cause]] = field(default_factory=list)  # other combinations that fit as well

    @property
    def conforms(self) -> bool:
        return self.parameter_difference == 0 and not self.flop_difference and not any(r["difference"] for r in self.rows)


def _adds_up(causes: tuple[Cause, ...], diff: dict[str, int]) -> bool:
    """Whether the causes' predicted differences equal diff in every component either of them names (a
    component only a cause touches must sum to 0, as diff holds only the non-zero differences)."""
    total: dict[str, int] = {}
    for c in causes:
        for k, v in c.parameters.items():
            total[k] = total.get(k, 0) + v
    return all(total.get(k, 0) == diff.get(k, 0) for k in total.keys() | diff.keys())


def diagnose(cfg: ModelConfig, batch: int, ctx: int, by_component: dict[str, int], flops_counted: int | None,
             unplaced: Iterable[str] = (), matrices: dict[str, int] | None = None) -> Diagnosis:
    """Compare a module's parameters by component and its counted forward FLOPs with the formulas; find the
    smallest combination of known causes whose predicted differences equal the observed ones exactly
    (parameters per component and FLOPs), else, where the parameters differ, the smallest that explains them alone."""
    formula = formula_by_component(cfg)
    observed = {**dict.fromkeys(COMPONENTS, 0), **by_component}
    diff = {k: observed[k] - formula[k] for k in COMPONENTS}
    rows = [{"component": k, "formula": formula[k], "module": observed[k], "difference": diff[k]}
            for k in COMPONENTS if formula[k] or observed[k]]
    flop_diff = None if flops_counted is None else flops_counted - acc.forward_flops(cfg, batch, ctx)
    nonzero = {k: v for k, v in diff.items() if v}
    best: list[Cause] = []
    alternatives: list[list[Cause]] = []
    if nonzero or flop_diff:
        causes = candidate_causes(cfg, batch, ctx, observed, matrices)
        for n in range(1, MAX_CAUSES + 1):
            fits = [combo for combo in itertools.combinations(causes, n) if _adds_up(combo, nonzero)]
            exact = [c for c in fits if flop_diff is None or sum(x.flops for x in c) == flop_diff]
            if exact:
                best, alternatives = list(exact[0]), [list(c) for c in exact[1:]]
                break
            # where the parameters match, nothing is needed to explain them: no fallback (a cause without
            # parameters that misses the FLOPs would be offered as "the likely cause" of nothing)
            if fits and not best and nonzero:
                best, alternatives = list(fits[0]), [list(c) for c in fits[1:]]
    return Diagnosis(rows, sum(diff.values()), flop_diff, best,
                     explains_parameters=_adds_up(tuple(best), nonzero),
                     explains_flops=flop_diff is None or sum(c.flops for c in best) == flop_diff,
                     unplaced=list(unplaced), alternatives=alternatives)
