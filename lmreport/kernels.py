"""CUDA kernel names: a short display name and a class (matmul, attention, softmax, ...).

Pure string functions, no torch. Kernel names come from Nsight Systems exports, demangled by
nsys: `void at::native::vectorized_elementwise_kernel<(int)4, at::native::BinaryFunctor<float,
float, float, at::native::binary_internal::MulFunctor<float>>, std::array<char *, (unsigned
long)3>>(int, T2, T3)` is one of PyTorch's element-wise kernels (ATen's Loops.cuh) running a
multiply. The display name keeps the kernel and the functor that says what it computes
(`vectorized_elementwise_kernel<MulFunctor>`) and drops the other template arguments.

Classes follow what the kernels are known for: cuBLAS/cuBLASLt GEMMs (`ampere_sgemm_*`,
`sm90_xmma_gemm_*`, `nvjet_*` (cuBLAS 12.x Hopper GEMMs), `cutlass::Kernel2<...sgemm...>`),
fused attention (FlashAttention `flash_fwd_kernel`, `FlashAttnFwdSm90`; xformers/PyTorch
`fmha_cutlassF`), `softmax_warp_forward`/`cunn_SoftMaxForward` (ATen SoftMax.cu), reductions
(`reduce_kernel<...Ops>`, norms), copies and fills, fused optimizers (`multi_tensor_apply_kernel`),
element-wise kernels, and Triton kernels from torch.compile by their prefix (`triton_poi_`
pointwise, `triton_red_`/`triton_per_` reductions, `triton_tem_` templates such as mm).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CLASSES = ("matmul", "attention", "softmax", "elementwise", "reduction", "copy/memset", "optimizer", "other")

# Checked in order, on "<qualified kernel name> <functor>": the first match wins. Each class has
# substrings (distinctive enough anywhere) and whole words (short op names, matched as words
# of snake_case/CamelCase names so that "exp" does not match "Expert"). Attention comes before
# matmul (FlashAttention kernels are `cutlass::device_kernel<flash::...>`), copy before
# element-wise (`elementwise_kernel<direct_copy_kernel_cuda>` is a copy), and matmul before
# reduction (`cublasLt::splitKreduce_kernel` finishes a split-K GEMM).
_RULES: tuple[tuple[str, re.Pattern, frozenset], ...] = tuple(
    (cls, re.compile(substrings, re.IGNORECASE), frozenset(words.split())) for cls, substrings, words in (
        ("attention", r"flash|fmha|attention|sdpa", "attn mha"),
        ("softmax", r"softmax", ""),
        ("optimizer", r"multi_tensor_apply|adam|optimizer", "sgd lamb lion"),
        ("matmul", r"gemm|gemv|cutlass(?!_kernels)|xmma|nvjet|cublas|matmul|splitkreduce|tensorop|wgmma|hmma|imma",
         "mm bmm addmm dot"),
        ("copy/memset", r"copy|memcpy|memset|catarray|gather|scatter|transpose|contiguous",
         "fill index cat permute arange"),
        ("reduction", r"reduce|reduction|welford|sum_functor|argmax|argmin|nll_loss|cross_entropy|triton_red|triton_per"
                      r"|cumsum", "norm mean sum"),
        ("elementwise", r"elementwise|functor|vectorized|unrolled|pointwise|triton_poi|distribution",
         "silu gelu relu sigmoid tanh exp sqrt rsqrt pow mul add sub div where sin cos neg abs clamp rotary "
         "dropout uniform normal addcmul addcdiv lerp reciprocal"),
    ))
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")

TRUNCATION_MARK = "…"  # nsys cuts long names in console tables with this character
_DISPLAY_MAX = 80
# Last name components too generic to show alone: show the namespace with them.
_GENERIC = {"device_kernel", "kernel", "Kernel", "Kernel2", "kernel_entry", "launch_kernel"}
_BUILTIN_TYPES = re.compile(r"^(?:unsigned |signed )?(?:int|long|short|char|float|double|bool|void|half|size_t"
                            r"|c10::Half|c10::BFloat16|__half|__nv_bfloat16|cutlass::half_t|cutlass::bfloat16_t"
                            r"|T\d+|std::\w+|at::\w+Base)\b")
_OPEN, _CLOSE = "<([", ">)]"


@dataclass(frozen=True)
class KernelName:
    raw: str
    qualified: str  # e.g. "at::native::vectorized_elementwise_kernel"
    functor: str | None  # e.g. "MulFunctor"
    functor_tells_class: bool  # the functor says what the kernel does (else display only)
    truncated: bool  # the name was cut ("…") before nsys (or a paste) gave it to us

    @property
    def base(self) -> str:
        parts = [p for p in self.qualified.split("::") if p]
        if not parts:
            return self.qualified
        if parts[-1] in _GENERIC and len(parts) > 1:
            return "::".join(parts[-2:])
        return parts[-1]

    @property
    def display(self) -> str:
        text = f"{self.base}<{self.functor}>" if self.functor else self.base
        if len(text) > _DISPLAY_MAX:
            return text[:_DISPLAY_MAX - 1] + TRUNCATION_MARK
        return text + (TRUNCATION_MARK if self.truncated else "")

    @property
    def kernel_class(self) -> str:
        functor = self.functor if self.functor_tells_class else ""
        return classify_text(f"{self.qualified} {functor}")


def _top_level(s: str) -> list[tuple[str, str]]:
    """Split a demangled name into top-level pieces: ("text", ...), ("<", args), ("(", params).

    Brackets nest; a stray closing bracket (a `>` comparison inside std::enable_if, or a name
    cut short) is kept as text instead of unbalancing the rest.
    """
    pieces: list[tuple[str, str]] = []
    depth, kind, buf = 0, "text", []
    for ch in s:
        if ch in _OPEN:
            if depth == 0:
                if buf:
                    pieces.append((kind, "".join(buf)))
                kind, buf = ch, []
            else:
                buf.append(ch)
            depth += 1
        elif ch in _CLOSE and depth > 0:
            depth -= 1
            if depth == 0:
                pieces.append((kind, "".join(buf)))
                kind, buf = "text", []
            else:
                buf.append(ch)
        else:
            buf.append(ch)
    if buf:
        pieces.append((kind, "".join(buf)))  # an unclosed group (a cut name) stays what it was
    return pieces


def _functor(args: str, generic_base: bool) -> tuple[str | None, bool]:
    """The template argument that says what a kernel computes, and whether it tells its class.

    Generic kernels name their work in a functor (`MulFunctor`, `direct_copy_kernel_cuda`,
    `MeanOps`); CUTLASS's `device_kernel` in its operator class (`GemmUniversal`,
    `FlashAttnFwdSm90`). Otherwise the first non-type argument is shown for display only:
    `expandInputRowsKernel<...GroupedGemmInput>` is data movement, not a GEMM.
    """
    found = re.findall(r"\b(\w*[Ff]unctor\w*)", args)
    if found:  # innermost: BinaryFunctor<float, float, float, MulFunctor<float>> -> MulFunctor
        return found[-1], True
    for rx in (r"\b(\w+_kernel_cuda)\b", r"\b((?!gpu_kernel)\w+_kernel(?:_impl)?)\b", r"\b(\w+Ops)\b"):
        m = re.search(rx, args)
        if m:
            return m.group(1), True
    if generic_base:
        for rx in (r"\b(\w*(?:Gemm|Attn|Flash|SoftMax|Softmax)\w*)\b", r"\b(\w*gemm\w*)\b"):
            m = re.search(rx, args)
            if m:
                return m.group(1), True
    for arg in (a.strip() for a in _split_args(args)):
        arg = re.sub(r"^\(\w[\w ]*\)\s*|^void\s+", "", arg)  # "(int)128" -> "128"; "void f<...>" -> "f<...>"
        if not arg or arg[0].isdigit() or arg[0] == "-" or _BUILTIN_TYPES.match(arg):
            continue
        ident = re.match(r"[A-Za-z_][\w:]*", arg)
        if ident:
            return ident.group(0).split("::")[-1] or None, generic_base
    return None, False


def _split_args(args: str) -> list[str]:
    """Top-level comma split of a template argument list."""
    out, depth, buf = [], 0, []
    for ch in args:
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE and depth > 0:
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return out


def parse_kernel_name(raw: str) -> KernelName:
    """Split a demangled kernel name into its qualified name and its functor."""
    name = raw.strip().strip('"')
    truncated = name.endswith(TRUNCATION_MARK) or name.endswith("...")
    name = name.rstrip(TRUNCATION_MARK).rstrip(".").rstrip() if truncated else name
    pieces = _top_level(name)
    # Drop trailing qualifiers (" const") and the parameter list at the end.
    while pieces and pieces[-1][0] == "text" and not pieces[-1][1].strip():
        pieces.pop()
    if len(pieces) > 1 and pieces[-1][0] == "(":
        pieces.pop()
    args = None
    if len(pieces) > 1 and pieces[-1][0] == "<":
        args = pieces.pop()[1]
    qualified = ""
    for kind, text in reversed(pieces):
        if kind == "text" and text.strip():
            qualified = text.split()[-1]
            break
    if not qualified:  # "[CUDA memcpy HtoD]" and other bracketed names
        qualified = name
    generic = qualified.split("::")[-1] in _GENERIC
    functor, tells = _functor(args, generic) if args else (None, False)
    return KernelName(raw, qualified, functor, tells, truncated)


def classify_text(text: str) -> str:
    words = {w.lower() for w in _WORD.findall(text)}
    for cls, substrings, names in _RULES:
        if substrings.search(text) or words & names:
            return cls
    return "other"


def classify(raw: str) -> str:
    """The class of a kernel (one of CLASSES)."""
    return parse_kernel_name(raw).kernel_class


def display_name(raw: str) -> str:
    return parse_kernel_name(raw).display


# torch.profiler's CPU operators: "aten::mm", "aten::_softmax", and autograd's bookkeeping
# ("autograd::engine::evaluate_function: MmBackward0", the node "MmBackward0" itself).
_AUTOGRAD_NODE = re.compile(r"^autograd::|Backward\d*$")


def operator_class(name: str) -> str:
    """The class of a CPU operator (one of CLASSES), by the words of its name as for kernels.

    Autograd's own ranges are "other": their self time is the engine's bookkeeping, and the
    ATen operators they call (aten::mm for MmBackward0) carry the work and are counted as such.
    """
    name = name.strip()
    if _AUTOGRAD_NODE.search(name):
        return "other"
    return classify_text(name.split("::")[-1])
