"""Which implementation a run measures: lmreport's reference LM, or the user's own (`--model MODULE:CLASS`).

The one seam through which every measured model, optimizer and loss is built (workloads.py,
the accounting checks, the memory estimator). A `ModelSpec` names three objects by
`module:name`: the LM class, the optimizer class and the loss function, each with the SHA-256
of the source file that defines it, so a record says exactly which code it measured.

The course's interfaces (first assignment):
- model: `Class(vocab_size, context_length, d_model, num_layers, num_heads, d_ff, rope_theta)`,
  called as `model(token_ids) -> logits` with token_ids (B, T) and logits (B, T, vocab_size).
  ADAPTERS lists the common variants (`theta` for `rope_theta`, extra `device`/`dtype` keywords)
  that are matched by inspect.signature.
- optimizer: `Class(params, lr, betas, eps, weight_decay)`, a torch.optim.Optimizer.
- loss: `function(logits, targets)` on logits (N, vocab_size) and targets (N,), as the
  course's cross_entropy; lmreport flattens (B, T) to N before calling it.

Modules are imported from the current directory (added to sys.path, as `python -m` would)
or from the installed packages (`pip install -e path/to/assignment1-basics`). Child processes
(subprocess, nsys and Slurm workers) import from the same folder through LMREPORT_IMPORT_DIR.

This module imports torch only inside the functions that build something, so rendering (which
reads specs from records and hashes source files) stays free of it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lmreport.errors import UserError
from lmreport.presets import ModelConfig

REFERENCE_MODEL = "lmreport.model:TransformerLM"
REFERENCE_OPTIMIZER = "lmreport.optim:AdamW"
REFERENCE_LOSS = "torch.nn.functional:cross_entropy"
FLAGS = {"model": "--model", "optimizer": "--optimizer", "loss": "--loss"}
REFERENCE_TARGETS = {"model": REFERENCE_MODEL, "optimizer": REFERENCE_OPTIMIZER, "loss": REFERENCE_LOSS}
SLUG_NAMES = {"optimizer": "opt", "loss": "loss"}  # a part's name in the run folder's suffix
IMPORT_DIR_VARIABLE = "LMREPORT_IMPORT_DIR"  # where child processes import the user's modules from

# The course's constructor keywords, in its order, and the names some implementations use instead.
COURSE_KEYWORDS = ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff", "rope_theta")
ADAPTERS: dict[str, tuple[str, ...]] = {
    "rope_theta": ("theta",),
    "num_layers": ("n_layers",),
    "num_heads": ("n_heads",),
    "context_length": ("max_seq_len",),
}
# AdamW's hyperparameters for every optimizer: the defaults of lmreport.optim.AdamW (a test checks
# they stay equal), passed by keyword since the course's AdamW may have no defaults.
OPTIMIZER_KEYWORDS = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}

# A small model for the checks made before measuring: distinct widths, so a transposed or
# wrongly sized output shows in its shape.
PROBE = ModelConfig("probe", d_model=32, d_ff=96, num_layers=2, num_heads=4, vocab_size=64, context_length=16)
PROBE_BATCH = 2


# --- the spec ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One object of the implementation: where it is named, where it is defined, and that file's hash."""

    target: str  # "module:name" as given on the command line
    source: str  # the module whose file defines the object (a class re-exported by a package names its own)
    sha256: str | None  # of that file; None for torch's own objects (the record's torch version says which)

    @property
    def short_sha(self) -> str:
        return (self.sha256 or "")[:12]


@dataclass(frozen=True)
class ModelSpec:
    """The measured implementation: model class, optimizer class and loss function."""

    model: Part
    optimizer: Part
    loss: Part
    probe_notes: tuple[str, ...] = field(default=(), compare=False)  # what the checks before measuring found

    @property
    def key(self) -> tuple[str, str, str]:
        """What tells two implementations apart in the records (the hashes only flag edits)."""
        return (self.model.target, self.optimizer.target, self.loss.target)

    @property
    def is_reference(self) -> bool:
        return self.key == (REFERENCE_MODEL, REFERENCE_OPTIMIZER, REFERENCE_LOSS)

    def _custom_parts(self) -> list[tuple[str, Part]]:
        """(name, part) of the parts that are not lmreport's, in the order model, optimizer, loss."""
        return [(name, part) for name, part in (("model", self.model), ("optimizer", self.optimizer), ("loss", self.loss))
                if part.target != REFERENCE_TARGETS[name]]

    @property
    def label(self) -> str:
        """`module:Class`, plus the optimizer and loss where they are not lmreport's."""
        extra = [f"{name} {part.target}" for name, part in self._custom_parts() if name != "model"]
        return self.model.target + (f" ({', '.join(extra)})" if extra else "")

    @property
    def slug(self) -> str:
        """The run folder's suffix: runs/<edition>-<profile>--<slug>/ (file-name safe)."""
        parts = [self.model.target] + [f"{SLUG_NAMES[name]}-{part.target}" for name, part in self._custom_parts()
                                       if name != "model"]
        return "--".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", p) for p in parts)

    def flags(self) -> str:
        """The command-line flags that select this implementation ('' for the reference)."""
        return "".join(f" {FLAGS[name]} {part.target}" for name, part in self._custom_parts())

    def to_config(self) -> dict:
        """The cell config's `implementation` (JSON), which every record of a model-measuring section carries."""
        out = {}
        for name in ("model", "optimizer", "loss"):
            p = getattr(self, name)
            out.update({name: p.target, f"{name}_source": p.source, f"{name}_sha256": p.sha256})
        return out

    @staticmethod
    def from_config(d: dict) -> "ModelSpec":
        """The spec of a record's `implementation`; a part it lacks (a hand-edited record) is lmreport's."""
        parts = {}
        for name, default in (("model", REFERENCE_MODEL), ("optimizer", REFERENCE_OPTIMIZER), ("loss", REFERENCE_LOSS)):
            target = d.get(name) if isinstance(d.get(name), str) else default
            source, sha = d.get(f"{name}_source"), d.get(f"{name}_sha256")
            parts[name] = Part(target, source if isinstance(source, str) else target.split(":")[0],
                               sha if isinstance(sha, str) else None)
        return ModelSpec(**parts)


@lru_cache(maxsize=1)
def reference() -> ModelSpec:
    """lmreport's own model, the course's AdamW as lmreport writes it, and torch's cross-entropy."""
    return ModelSpec(*(Part(t, t.split(":")[0], module_sha256(t.split(":")[0]))
                       for t in (REFERENCE_MODEL, REFERENCE_OPTIMIZER, REFERENCE_LOSS)))


def spec_of(config: dict) -> ModelSpec:
    """The implementation a cell's config names (the reference when it names none)."""
    impl = config.get("implementation")
    return ModelSpec.from_config(impl) if isinstance(impl, dict) else reference()


# --- source files and their hashes -----------------------------------------------------------------


def _owned_by_torch(module: str) -> bool:
    return module == "torch" or module.startswith("torch.")


def _sha256_of(path: str | None) -> str | None:
    if not path or not path.endswith(".py"):
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def module_sha256(module: str) -> str | None:
    """SHA-256 of a module's source file, found without running the module (importlib.util.find_spec
    runs its parent packages only), so rendering can compare records with today's source."""
    if _owned_by_torch(module):
        return None
    loaded = sys.modules.get(module)
    if loaded is not None:
        return _sha256_of(getattr(loaded, "__file__", None))
    add_import_dirs()
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return _sha256_of(found.origin if found else None)


@lru_cache(maxsize=None)
def current_sha256(module: str) -> str | None:
    """module_sha256, once per process (render asks for every record)."""
    return module_sha256(module)


# --- importing ------------------------------------------------------------------------------------


def add_import_dirs() -> None:
    """The current directory and LMREPORT_IMPORT_DIR first on sys.path, as `python -m` does for the
    current directory (the `lmreport` script's own folder is .venv/bin, which holds no user code)."""
    for folder in (os.environ.get(IMPORT_DIR_VARIABLE), os.getcwd()):
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def parse_target(text: str, flag: str) -> tuple[str, str]:
    """'pkg.module:Name' -> ('pkg.module', 'Name'); anything else is a one-line UserError."""
    module, colon, name = text.partition(":")
    ident = r"[A-Za-z_][A-Za-z0-9_]*"
    if not colon:
        raise UserError(f"{flag} {text}: expected MODULE:NAME with a colon, e.g. {flag} "
                        + {"--model": "cs336_basics.model:BasicsTransformerLM", "--optimizer": "cs336_basics.optimizer:AdamW",
                           "--loss": "cs336_basics.nn_utils:cross_entropy"}.get(flag, "package.module:Name"))
    if not re.fullmatch(rf"{ident}(\.{ident})*", module) or not re.fullmatch(rf"{ident}(\.{ident})*", name):
        raise UserError(f"{flag} {text}: MODULE:NAME must be a dotted module path and a Python name "
                        f"(got module {module!r} and name {name!r})")
    return module, name


def import_target(text: str, flag: str):
    """The object `text` names, imported from the current directory or the installed packages."""
    module_name, name = parse_target(text, flag)
    add_import_dirs()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise UserError(f"{flag} {text}: no module named {module_name!r} in {os.getcwd()} or in the installed "
                            f"packages; run lmreport from the folder that holds it, or `pip install -e` its "
                            f"package into lmreport's environment (.venv)") from None
        raise UserError(f"{flag} {text}: importing {module_name} failed: it imports {e.name!r}, which is not "
                        f"installed in lmreport's environment (.venv/bin/pip install {e.name})") from None
    except Exception as e:  # noqa: BLE001 - the user's code: a SyntaxError, a failing import-time statement
        raise UserError(f"{flag} {text}: importing {module_name} failed: {type(e).__name__}: {_one_line(e)}") from None
    obj = module
    for attr in name.split("."):
        if not hasattr(obj, attr):
            raise UserError(f"{flag} {text}: {module_name} ({getattr(module, '__file__', '?')}) has no {name!r}; "
                            f"it defines {_candidates(module, flag)}")
        obj = getattr(obj, attr)
    return obj


def _candidates(module, flag: str) -> str:
    """What the module defines that could have been meant: its classes (model, optimizer) or functions (loss)."""
    want = inspect.isfunction if flag == "--loss" else inspect.isclass
    names = [n for n, v in vars(module).items()
             if want(v) and getattr(v, "__module__", None) == module.__name__ and not n.startswith("_")]
    return ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "nothing of that kind"


def _part(text: str, flag: str) -> tuple[Part, object]:
    obj = import_target(text, flag)
    source = getattr(obj, "__module__", None) or parse_target(text, flag)[0]
    return Part(text, source, module_sha256(source)), obj


def load_spec(model: str | None = None, optimizer: str | None = None, loss: str | None = None) -> ModelSpec:
    """The spec the flags name (None: lmreport's own), each object imported and its source hashed.

    Flags that name nothing new give the reference spec without importing anything. Child processes
    (subprocess, nsys and Slurm workers) import from this process's current directory.
    """
    texts = (model or REFERENCE_MODEL, optimizer or REFERENCE_OPTIMIZER, loss or REFERENCE_LOSS)
    ref = reference()
    if texts == ref.key:
        return ref
    os.environ.setdefault(IMPORT_DIR_VARIABLE, os.getcwd())
    parts, objects = [], {}
    for name, text in zip(("model", "optimizer", "loss"), texts):
        if text == getattr(ref, name).target:
            parts.append(getattr(ref, name))
            continue
        part, objects[name] = _part(text, FLAGS[name])
        parts.append(part)
    if "model" in objects and not inspect.isclass(objects["model"]):
        raise UserError(f"--model {texts[0]}: names a {type(objects['model']).__name__}, not a class; give the "
                        "class of your transformer LM")
    if "loss" in objects and not callable(objects["loss"]):
        raise UserError(f"--loss {texts[2]}: names a {type(objects['loss']).__name__}, not a function")
    return ModelSpec(*parts)


def parse_spec(model: str | None = None, optimizer: str | None = None, loss: str | None = None) -> ModelSpec:
    """The spec the flags name, checked for form only and hashed without importing (for render/status)."""
    texts = {"model": model or REFERENCE_MODEL, "optimizer": optimizer or REFERENCE_OPTIMIZER,
             "loss": loss or REFERENCE_LOSS}
    if tuple(texts.values()) == reference().key:
        return reference()
    parts = {}
    for name, text in texts.items():
        module, _ = parse_target(text, FLAGS[name])
        parts[name] = Part(text, module, module_sha256(module))
    return ModelSpec(**parts)


# --- building ---------------------------------------------------------------------------------------


def constructor_keywords(cls, cfg: ModelConfig, device, target: str) -> dict:
    """The keywords `cls(...)` is built with: the course's, renamed through ADAPTERS, plus device and dtype
    where the constructor takes them. A keyword it lacks, or an argument lmreport cannot supply, is a
    one-line UserError naming it."""
    import torch

    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        raise UserError(f"--model {target}: its constructor's signature cannot be read") from None
    params = sig.parameters
    takes = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    any_keyword = any(p.kind == p.VAR_KEYWORD for p in params.values())
    values = {"vocab_size": cfg.vocab_size, "context_length": cfg.context_length, "d_model": cfg.d_model,
              "num_layers": cfg.num_layers, "num_heads": cfg.num_heads, "d_ff": cfg.d_ff, "rope_theta": cfg.rope_theta}
    out = {}
    for key in COURSE_KEYWORDS:
        names = (key, *ADAPTERS.get(key, ()))
        name = next((n for n in names if n in takes), key if any_keyword else None)
        if name is None:
            raise UserError(f"--model {target}: {cls.__name__}{sig} does not accept {' or '.join(names)}; "
                            f"lmreport builds it with the course's keywords {', '.join(COURSE_KEYWORDS)}")
        out[name] = values[key]
    if "device" in takes:
        out["device"] = torch.device(device)
    if "dtype" in takes:
        out["dtype"] = torch.float32  # weights stay fp32; bf16 runs are autocast (workloads.py)
    required = [n for n, p in params.items() if p.default is p.empty and n not in out
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise UserError(f"--model {target}: {cls.__name__}{sig} requires {', '.join(required)}, which lmreport "
                        f"cannot supply (it passes {', '.join(out)})")
    return out


def build(spec: ModelSpec | None, cfg: ModelConfig, device="cpu", context_length: int | None = None):
    """The LM of `spec` for `cfg` on `device` (RoPE sized for context_length when given).

    Built inside `with torch.device(device)`, so factory calls without a device land there too
    (`meta` included); under a FakeTensorMode the caller passes device="cpu".
    """
    import torch

    spec = spec or reference()
    if context_length is not None:
        cfg = cfg.with_(context_length=context_length)
    with torch.device(device):
        if spec.model.target == REFERENCE_MODEL:
            from lmreport.model import build_model
            return build_model(cfg)
        cls = import_target(spec.model.target, "--model")
        return cls(**constructor_keywords(cls, cfg, device, spec.model.target))


def make_optimizer(spec: ModelSpec | None, params):
    """The optimizer of `spec` over params, with the course's AdamW hyperparameters (OPTIMIZER_KEYWORDS)."""
    spec = spec or reference()
    if spec.optimizer.target == REFERENCE_OPTIMIZER:
        from lmreport.optim import AdamW as cls
    else:
        cls = import_target(spec.optimizer.target, "--optimizer")
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        sig = None
    if sig is not None and not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        lacking = [k for k in OPTIMIZER_KEYWORDS if k not in sig.parameters]
        if lacking:
            raise UserError(f"--optimizer {spec.optimizer.target}: {getattr(cls, '__name__', cls)}{sig} does not accept "
                            f"{', '.join(lacking)}; lmreport builds it as AdamW(params, "
                            + ", ".join(f"{k}={v}" for k, v in OPTIMIZER_KEYWORDS.items()) + ")")
    return cls(params, **OPTIMIZER_KEYWORDS)


def loss_function(spec: ModelSpec | None):
    """`loss(logits (N, V), targets (N,)) -> scalar` of spec (torch's cross_entropy by default)."""
    spec = spec or reference()
    if spec.loss.target == REFERENCE_LOSS:
        import torch.nn.functional as F
        return F.cross_entropy
    return import_target(spec.loss.target, "--loss")


# --- the checks made before measuring ---------------------------------------------------------------


def check(spec: ModelSpec) -> ModelSpec:
    """Build the spec's model at PROBE size on the CPU, run forward, loss, backward and one optimizer step,
    and check the logits' shape; then try the `meta` device and fake tensors, which the accounting checks
    and the memory estimates use. A failure of the first kind is a one-line UserError; the second kind
    is a note (returned in probe_notes): those cells fall back, and say why."""
    import torch

    if spec.is_reference:
        return spec
    target = spec.model.target
    try:
        model = build(spec, PROBE, "cpu")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's constructor
        raise UserError(f"--model {target}: building it ({_course_call(PROBE)}) failed: "
                        f"{type(e).__name__}: {_one_line(e)}") from None
    ids = torch.randint(PROBE.vocab_size, (PROBE_BATCH, PROBE.context_length + 1), generator=torch.Generator().manual_seed(0))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    try:
        logits = model(inputs)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"--model {target}: model(token_ids) failed on token ids of shape {tuple(inputs.shape)}: "
                        f"{type(e).__name__}: {_one_line(e)}") from None
    expected = (PROBE_BATCH, PROBE.context_length, PROBE.vocab_size)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        got = f"shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else f"a {type(logits).__name__}"
        raise UserError(f"--model {target}: model(token_ids) returned {got} for token ids of shape "
                        f"{tuple(inputs.shape)}; lmreport needs logits of shape (batch, sequence, vocab_size) = {expected}")
    try:
        loss = loss_function(spec)(logits.flatten(0, 1), targets.flatten())
        ok = isinstance(loss, torch.Tensor) and loss.dim() == 0
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UserError(f"--loss {spec.loss.target}: loss(logits (N, V), targets (N,)) failed: "
                        f"{type(e).__name__}: {_one_line(e)}") from None
    if not ok:
        raise UserError(f"--loss {spec.loss.target}: loss(logits (N, V), targets (N,)) must return a scalar tensor, "
                        f"not {type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
    loss.backward()
    try:
        optimizer = make_optimizer(spec, model.parameters())
        optimizer.step()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UserError(f"--optimizer {spec.optimizer.target}: building it or taking one step failed: "
                        f"{type(e).__name__}: {_one_line(e)}") from None
    notes = abstract_notes(spec)
    return ModelSpec(spec.model, spec.optimizer, spec.loss, probe_notes=tuple(notes))


def _course_call(cfg: ModelConfig) -> str:
    return ", ".join(f"{k}={getattr(cfg, k)}" for k in COURSE_KEYWORDS)


# --- building without memory: meta, then fake tensors ---------------------------------------------------


class NotAbstract(RuntimeError):
    """The model cannot run on `meta` nor on fake tensors; the message says why for each."""


ABSTRACT_KINDS = ("meta", "fake")  # in the order they are tried
ABSTRACT_LABELS = {"meta": "the meta device", "fake": "fake tensors (FakeTensorMode)", "cpu": "real CPU tensors"}


def fakeify(model, fake_mode) -> None:
    """Replace the parameters and buffers of a model built on `meta` by fake CPU tensors of the same
    shape, dtype and strides (torch._subclasses.FakeTensorMode: no data, no memory). A tensor shared by
    two modules (tied embeddings, one RoPE table for all layers) stays shared."""
    import torch

    memo: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")

    with fake_mode:
        for mod in model.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None:
                    if id(p) not in memo:
                        memo[id(p)] = torch.nn.Parameter(fake(p), requires_grad=p.requires_grad)
                    mod._parameters[name] = memo[id(p)]
            for name, b in list(mod._buffers.items()):
                if b is not None:
                    memo.setdefault(id(b), fake(b))
                    mod._buffers[name] = memo[id(b)]


def abstract_model(spec: ModelSpec | None, cfg: ModelConfig, context_length: int, kind: str):
    """(model, context manager to run it in, device of its inputs, note) for kind `meta`, `fake` or `cpu`;
    the note says why a fake model was built under FakeTensorMode rather than on `meta` (else None).

    `fake`: built on `meta` (initialisers do nothing there; torch's trunc_normal_ reads values, which
    fake tensors refuse), then its tensors made fake; built under FakeTensorMode when `meta` cannot
    build it. Fake tensors accept what `meta` refuses when a model makes tensors on a device of its own
    ("cpu" inside forward meeting meta weights); both refuse reading a value (`.item()`, `if x.any():`).
    """
    import contextlib

    if kind in ("meta", "cpu"):
        return build(spec, cfg, kind, context_length), contextlib.nullcontext(), kind, None
    if kind != "fake":
        raise ValueError(f"unknown kind {kind!r}")
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    try:
        model = build(spec, cfg, "meta", context_length)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a constructor meta refuses may still build on fake tensors
        note = f"not built on the meta device ({type(e).__name__}: {_one_line(e)[:300]}), so under FakeTensorMode"
        with mode:
            return build(spec, cfg, "cpu", context_length), mode, "cpu", note
    fakeify(model, mode)
    return model, mode, "cpu", None


def run_abstract(spec: ModelSpec | None, cfg: ModelConfig, ctx: int, batch: int, fn, kinds=ABSTRACT_KINDS):
    """fn(model, token_ids) on the first of `kinds` where building and fn both work.

    Returns (result, kind, notes): notes say why each earlier kind failed ("not on the meta device:
    ..."). Raises NotAbstract with every reason when none works.
    """
    import torch

    notes = []
    for kind in kinds:
        try:
            model, manager, device, note = abstract_model(spec, cfg, max(ctx, cfg.context_length), kind)
            notes += [note] if note else []
            with manager:
                ids = torch.zeros(batch, ctx, dtype=torch.long, device=device)
                return fn(model, ids), kind, notes
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's model on an unusual device: say why, try the next
            notes.append(f"not on {ABSTRACT_LABELS[kind]}: {type(e).__name__}: {_one_line(e)[:300]}")
    raise NotAbstract("; ".join(notes))


def abstract_notes(spec: ModelSpec) -> list[str]:
    """At PROBE size: one note when the model needs a fallback for meta or fake tensors ([] when meta works)."""
    def forward(model, ids):
        return model(ids).shape

    try:
        _, kind, notes = run_abstract(spec, PROBE, PROBE.context_length, PROBE_BATCH, forward)
    except NotAbstract as e:
        return [f"{spec.model.target} runs neither on the meta device nor on fake tensors ({e}); the accounting "
                "checks fall back to real CPU tensors at the CPU sizes, and full-size memory estimates are skipped"]
    if kind == "meta":
        return []
    return [f"{spec.model.target} does not run on the meta device ({'; '.join(notes)}); the accounting checks "
            "run it on fake tensors (FakeTensorMode) instead, as the memory estimates do"]


# --- which records belong to which implementation ------------------------------------------------------


def implementation_of(record: dict, measures_model: bool) -> dict | None:
    """The implementation a record measured: its config's `implementation`; for a record of a section
    that measures the model but names none (written before lmreport named it), the reference; None for
    records that measure no model of the user (attention, precision, and cells that say so with null)."""
    cfg = record.get("config") or {}
    if "implementation" in cfg:
        impl = cfg["implementation"]
        return impl if isinstance(impl, dict) else None
    return reference().to_config() if measures_model else None


def belongs(record: dict, spec: ModelSpec, measures_model: bool) -> bool:
    """Whether a record goes into the writeup of `spec`: it measured that implementation, or no model."""
    impl = implementation_of(record, measures_model)
    return impl is None or ModelSpec.from_config(impl).key == spec.key


def label_of(impl: dict) -> str:
    """ModelSpec.label of a record's implementation."""
    return ModelSpec.from_config(impl).label


def stale(impl: dict) -> list[str]:
    """The parts of a record's implementation whose source file has changed since (or is gone)."""
    out = []
    for name in ("model", "optimizer", "loss"):
        recorded, module = impl.get(f"{name}_sha256"), impl.get(f"{name}_source")
        if isinstance(recorded, str) and isinstance(module, str) and current_sha256(module) != recorded:
            out.append(name)
    return out
