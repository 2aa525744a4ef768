"""Model tables per handout edition, sweep profiles, and the names of what the experiments run.

Pure data (no torch import), so accounting and rendering stay fast. Sources: the systems
handout of the LM-from-scratch course, editions 2025 and 2026 (model table "Table 1",
vocab 10,000, batch 4), and the first assignment's accounting questions (GPT-2 shapes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

EDITIONS = (2025, 2026)
DEFAULT_EDITION = 2025


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of one transformer LM (the course's reference architecture)."""

    name: str
    d_model: int  # width of the residual stream
    d_ff: int  # inner width of the SwiGLU feed-forward (three matrices)
    num_layers: int  # transformer blocks
    num_heads: int  # attention heads; d_model must divide evenly
    vocab_size: int = 10_000
    context_length: int = 1024  # longest sequence RoPE is built for
    rope_theta: float = 10_000.0

    @property
    def d_head(self) -> int:
        return self.d_model // self.num_heads

    def with_(self, **changes) -> "ModelConfig":
        return replace(self, **changes)


def swiglu_d_ff_2026(d_model: int) -> int:
    """2026 convention: the multiple of 64 nearest to 8/3 * d_model (GPT-2 accounting)."""
    return 64 * round(8 * d_model / 3 / 64)


def _gpt2(name: str, layers: int, d_model: int, heads: int, edition: int) -> ModelConfig:
    d_ff = 4 * d_model if edition == 2025 else swiglu_d_ff_2026(d_model)
    return ModelConfig(name, d_model, d_ff, layers, heads, vocab_size=50_257, context_length=1024)


def _table(*rows: tuple[str, int, int, int, int]) -> dict[str, ModelConfig]:
    return {n: ModelConfig(n, d, f, l, h) for n, d, f, l, h in rows}


_SMALL = ("small", 768, 3072, 12, 12)
_MEDIUM = ("medium", 1024, 4096, 24, 16)
_LARGE = ("large", 1280, 5120, 36, 20)


@dataclass(frozen=True)
class TrainingTimeQuestion:
    """A-d: how long GPT-2 XL trains on one accelerator at a given MFU."""

    accelerator: str
    peak_flops: float  # FLOP/s the handout gives for the precision it names
    peak_source: str
    precision: str
    steps: int = 400_000
    batch_size: int = 1024
    mfu: float = 0.5
    backward_to_forward: float = 2.0  # handout assumption: backward costs 2x forward
    time_unit: str = "days"


@dataclass(frozen=True)
class Edition:
    """Everything that differs between handout editions."""

    year: int
    study_models: dict[str, ModelConfig]  # the benchmark model table (vocab 10,000)
    gpt2: dict[str, ModelConfig]  # GPT-2 shapes for the accounting questions
    bench_contexts: tuple[int, ...]
    memory_model: str  # size profiled in the memory section
    memory_contexts: tuple[int, ...]
    residual_batch: int  # M-d: batch of the residual-stream activation question
    residual_contexts: tuple[int, ...]
    mib_label: str  # "MB" (2025, meaning 1024^2 bytes) or "MiB" (2026)
    swiglu_activations: bool  # 2026 adds W3 and the element-wise product to A-a's list
    training_time: TrainingTimeQuestion
    long_context: int = 16_384  # T-e
    batch_size: int = 4
    vocab_size: int = 10_000
    memory_budget_bytes: int = 80 * 10**9  # A-b: "80 GB"


EDITION_TABLES: dict[int, Edition] = {
    2025: Edition(
        year=2025,
        study_models=_table(_SMALL, _MEDIUM, _LARGE, ("xl", 1600, 6400, 48, 25), ("2.7B", 2560, 10240, 32, 32)),
        gpt2={n: _gpt2(n, *shape, 2025) for n, shape in
              {"GPT-2 small": (12, 768, 12), "GPT-2 medium": (24, 1024, 16),
               "GPT-2 large": (36, 1280, 20), "GPT-2 XL": (48, 1600, 25)}.items()},
        bench_contexts=(128, 256, 512, 1024),
        memory_model="2.7B",
        memory_contexts=(128, 256, 512),
        residual_batch=4,
        residual_contexts=(512,),
        mib_label="MB",
        swiglu_activations=False,
        training_time=TrainingTimeQuestion(
            accelerator="A100", peak_flops=19.5e12, precision="fp32",
            peak_source="handout: A100 fp32 peak 19.5 TFLOP/s", time_unit="days"),
    ),
    2026: Edition(
        year=2026,
        study_models=_table(_SMALL, _MEDIUM, _LARGE, ("xl", 2560, 10240, 32, 32), ("10B", 4608, 12288, 50, 36)),
        gpt2={n: _gpt2(n, *shape, 2026) for n, shape in
              {"GPT-2 small": (12, 768, 12), "GPT-2 medium": (24, 1024, 16),
               "GPT-2 large": (36, 1280, 20), "GPT-2 XL": (48, 1600, 25)}.items()},
        bench_contexts=(512,),
        memory_model="xl",
        memory_contexts=(128, 2048),
        residual_batch=4,
        residual_contexts=(128, 2048),
        mib_label="MiB",
        swiglu_activations=True,
        training_time=TrainingTimeQuestion(
            accelerator="H100", peak_flops=495e12, precision="TF32",
            peak_source="handout: H100 TF32 peak 495 TFLOP/s", time_unit="hours"),
    ),
}


def edition(year: int | str) -> Edition:
    try:
        return EDITION_TABLES[int(year)]
    except (KeyError, ValueError):
        raise ValueError(f"unknown edition {year!r}: choose one of {', '.join(map(str, EDITIONS))}") from None


# --- sweep profiles -----------------------------------------------------------------------

# Sizes small enough for a 2-core CPU; same architecture, same vocab as the study table.
CPU_MODELS = _table(("tiny", 128, 512, 2, 4), ("mini", 256, 1024, 4, 4))


@dataclass(frozen=True)
class Profile:
    """What a sweep runs: which sizes, contexts and step counts, on which kind of device."""

    name: str
    device: str  # "cpu" or "cuda": the device the profile is meant for
    description: str
    edition: int | None = None  # fixed edition (handout profiles) or None (follows --edition)
    sizes: tuple[str, ...] = ()  # empty: every size of the edition's table
    contexts: tuple[int, ...] = ()  # empty: the edition's benchmark contexts
    warmup_steps: int = 5
    measure_steps: int = 10
    extra_models: dict[str, ModelConfig] = field(default_factory=dict)
    bench_modes: tuple[str, ...] = ("forward", "forward_backward", "train")  # modes of the bench grid
    bench_dtypes: tuple[str, ...] = ("fp32", "bf16")  # precisions of the bench grid (bf16 = autocast)
    warmup_ablation: tuple[int, ...] = (0, 1, 2, 5)  # warm-up counts of the B-c ablation (smallest context)
    compile_sizes: tuple[str, ...] = ()  # sizes timed eager vs torch.compile (C-b); empty: every size
    compile_contexts: tuple[int, ...] = ()  # contexts of the compile comparison; empty: the bench contexts
    compile_modes: tuple[str, ...] = ()  # modes of the compile comparison; empty: forward and train
    ablation_sizes: tuple[str, ...] = ()  # sizes of the warm-up ablation (B-c); empty: every size
    memory_size: str | None = None  # model of the memory section's cells; None: the edition's (Edition.memory_model)
    memory_contexts: tuple[int, ...] = ()  # their contexts; empty: the edition's (Edition.memory_contexts)
    attention_grid: "AttentionGrid | None" = None  # the attention sweep; None: the handout's (CUDA) or the CPU grid
    profiling_sizes: tuple[str, ...] = ()  # sizes of the profiling (nsys) section; empty: its handout sweep on a GPU
    profiling_contexts: tuple[int, ...] = ()  # its contexts; empty: as profiling_sizes

    def models(self, ed: Edition) -> dict[str, ModelConfig]:
        """Size name -> config for this profile (the edition's table plus profile-only sizes)."""
        table = {**ed.study_models, **self.extra_models}
        names = self.sizes or tuple(ed.study_models)
        return {n: table[n] for n in names}

    def bench_contexts(self, ed: Edition) -> tuple[int, ...]:
        return self.contexts or ed.bench_contexts

    def memory_cells(self, ed: Edition) -> tuple[str, tuple[int, ...]]:
        """(size, contexts) of the memory section: the profile's, else the edition's."""
        return self.memory_size or ed.memory_model, self.memory_contexts or ed.memory_contexts


PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu", device="cpu",
        description="small sizes and short contexts for a CPU; full-size memory by estimation",
        sizes=("tiny", "mini"), contexts=(64, 128), warmup_steps=2, measure_steps=5,
        extra_models=CPU_MODELS, compile_sizes=("tiny",), compile_contexts=(64,),
        profiling_contexts=(64,)),  # the profiling section at its shortest context only: the CPU writeup stays quick
    "handout-2025": Profile(
        name="handout-2025", device="cuda", edition=2025,
        description="the 2025 handout: every size at contexts 128/256/512/1024",
        # QUESTIONS.md C-b asks compiled vs not per size (forward, and the full training step), not per context:
        # one context, 512 (the 2026 edition's whole bench and the H200 records' main context), gives 10 compiled
        # cells instead of 40, each paying tens of seconds of torch.compile on a GPU.
        compile_contexts=(512,)),
    "handout-2026": Profile(
        name="handout-2026", device="cuda", edition=2026,
        description="the 2026 handout: every size at context 512"),
}


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}") from None


def default_profile_name(cuda_available: bool, year: int) -> str:
    """The embedded default: `cpu` without CUDA, the edition's handout profile with it."""
    return f"handout-{year}" if cuda_available else "cpu"


def resolve(profile_name: str | None, year: int | str | None, cuda_available: bool) -> tuple[Profile, Edition]:
    """Pick the profile and edition from CLI flags; a handout profile fixes its edition."""
    if profile_name is None:
        profile_name = default_profile_name(cuda_available, int(year or DEFAULT_EDITION))
    prof = profile(profile_name)
    if prof.edition is not None:
        if year is not None and int(year) != prof.edition:
            raise ValueError(f"profile {prof.name} is the {prof.edition} edition; drop --edition {year} or pick handout-{year}")
        return prof, edition(prof.edition)
    return prof, edition(year or DEFAULT_EDITION)


# --- what the experiments run, named here so that reports read it without importing torch ---------

# The phases of one step of each workload mode (lmreport/workloads.py runs them; each phase is an
# NVTX range and a timed phase of timing.time_phases).
WORKLOAD_PHASES = {"forward": ("forward",), "forward_backward": ("forward", "backward"),
                   "train": ("forward", "backward", "optimizer step")}

# The profiling (nsys) section's profilers (experiments/nsys.py) and the variable that picks one,
# which `lmreport run --profiler` sets: here so that building the CLI's parser imports no experiment.
PROFILERS = ("auto", "nsys", "torch")
PROFILER_VARIABLE = "LMREPORT_PROFILER"


@dataclass(frozen=True)
class AttentionGrid:
    """The (d, T) sweep of the attention study on one kind of device, and how many passes each cell times."""

    batch: int
    d: tuple[int, ...]
    seq_len: tuple[int, ...]
    warmup: int  # untimed forward + backward passes before timing
    passes: int  # timed forward passes, and as many timed backward passes
    # (d, T) of one more eager cell, at `batch`, sized to run out of memory on any GPU (a real CUDA OOM,
    # recorded `oom` while the sweep goes on); None: no such cell
    oom_probe: tuple[int, int] | None = None


ATTENTION_VARIANTS = ("eager", "compiled", "sdpa")  # the model's attention, under torch.compile, fused SDPA
ATTENTION_OOM_PROBE = "oom-probe"  # config["purpose"] of the cell AttentionGrid.oom_probe adds
# The handout: batch 8, d in {16, 32, 64, 128}, T in {256, 1024, 4096, 8192, 16384}, 100 passes.
ATTENTION_HANDOUT_GRID = AttentionGrid(batch=8, d=(16, 32, 64, 128), seq_len=(256, 1024, 4096, 8192, 16384),
                                       warmup=5, passes=100)
# A 2-core CPU: the same batch and widths, four shorter lengths, 10 passes; the whole sweep
# (48 cells, one torch.compile) stays well under two minutes.
ATTENTION_CPU_GRID = AttentionGrid(batch=8, d=(16, 32, 64, 128), seq_len=(64, 128, 256, 512), warmup=2, passes=10)


def model_table(ed: Edition, prof: Profile | None = None) -> dict[str, ModelConfig]:
    """Every size a cell or a record may name: the edition's table, the profile's own sizes, and the
    CPU sizes (the memory section's estimator check runs those whatever the profile)."""
    return {**ed.study_models, **(prof.extra_models if prof else {}), **CPU_MODELS}


def accounting_table(ed: Edition, family: str) -> dict[str, ModelConfig]:
    """The sizes an accounting cell's `family` names: GPT-2's ("gpt2"), the CPU sizes ("cpu"), else the
    edition's study table."""
    return {"gpt2": ed.gpt2, "cpu": CPU_MODELS}.get(family, ed.study_models)


def model_of(config: dict) -> ModelConfig:
    """The model of a cell's config (its edition, profile and size)."""
    prof = profile(config["profile"]) if config.get("profile") else None
    return model_table(edition(config["edition"]), prof)[config["size"]]


# One short pass over every GPU code path of every section: about 5 minutes on one H100/H200 (estimated
# from the H200 run's records in tests/test_gpu_quick.py), every cell within a 24 GB card except the
# attention's out-of-memory probe, which must fail on any GPU: at batch 8 and T = 131,072 one T x T fp32
# matrix is 8 * 131072**2 * 4 bytes = 550 GB, so the first product Q K^T fails at its allocation.
ATTENTION_GPU_QUICK_GRID = AttentionGrid(batch=8, d=(16, 64), seq_len=(1024, 4096, 8192), warmup=2, passes=20,
                                         oom_probe=(16, 131_072))
PROFILES["gpu-quick"] = Profile(
    name="gpu-quick", device="cuda",
    description="one short pass over every GPU code path (about 5 minutes on an H100/H200, fits a 24 GB card)",
    sizes=("small", "medium"), contexts=(128, 256), warmup_steps=2, measure_steps=5,
    ablation_sizes=("small",), compile_sizes=("small",), compile_contexts=(128,), compile_modes=("train",),
    memory_size="small", memory_contexts=(128, 256),
    attention_grid=ATTENTION_GPU_QUICK_GRID,
    profiling_sizes=("small",), profiling_contexts=(128,))
