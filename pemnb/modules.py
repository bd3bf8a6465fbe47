"""The only place that touches peft: attach a module, read and write its state, save and load it.

A module's *state* is a plain ``dict[str, Tensor]`` with canonical keys (peft's adapter name and
``modules_to_save`` wrappers stripped), so :mod:`pemnb.arithmetic` can compose it without a model.
For a full fine-tune (``kind="fft"``) the state is the task vector τ = θ_ft − θ_pre.

Modules leave and enter pemnb in peft's own format: :func:`export_peft` writes any LoRA/(IA)³ state
(trained or composed) as an adapter folder stock ``PeftModel.from_pretrained`` loads, :func:`import_peft`
and :func:`attach_peft` read any peft adapter folder, :func:`save_finetuned` saves a composed full
fine-tune θ_pre + τ with ``save_pretrained``.
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import torch

from .arithmetic import KINDS, check_kind, role
from .backbones import HEAD_MODULES, IA3_TARGETS, LORA_TARGETS, family_of

_PRETRAINED = "_pemnb_pretrained"


@contextmanager
def _quiet_peft():
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` when it wraps a model; the
    FutureWarning says nothing a reader can act on, so it is kept off the page."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def attach(model, kind: str, *, r: int = 8, alpha: int = 16, dropout: float = 0.0, init_seed: int = 0,
           target_modules: list[str] | None = None, feedforward_modules: list[str] | None = None,
           with_head: bool | None = None):
    """Make `model` trainable as a module of `kind` and return the model to train.

    lora/ia3 wrap the model with peft (targets default to the paper's: LoRA on query/value, (IA)³ on
    key, value and the FFN). fft trains every weight and remembers θ_pre so its state is τ.
    init_seed: seeds the module's random init; modules that will be composed share it (the paper's
    modules started from the same LoRA A).
    with_head: also train (and treat as part of the module) the classification head; default: when the
    model has one.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown module kind {kind!r}; expected one of {KINDS}")
    family = family_of(model)
    heads = [h for h in HEAD_MODULES.get(family, []) if _has_module(model, h)]
    if with_head is None:
        with_head = bool(heads)
    torch.manual_seed(init_seed)
    if kind == "fft":
        for p in model.parameters():
            p.requires_grad_(True)
        setattr(model, _PRETRAINED, {k: v.detach().clone() for k, v in model.named_parameters()})
        model.pemnb_kind = "fft"
        return model

    from peft import IA3Config, LoraConfig, get_peft_model

    extra = {"modules_to_save": heads} if with_head and heads else {}
    if family == "gpt2":  # GPT-2's Conv1D stores weights transposed
        extra["fan_in_fan_out"] = True
    if kind == "lora":
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                            target_modules=target_modules or LORA_TARGETS[family], **extra)
    else:
        targets, ff = IA3_TARGETS[family]
        config = IA3Config(target_modules=target_modules or targets,
                           feedforward_modules=feedforward_modules or ff, **extra)
    with _quiet_peft():
        peft_model = get_peft_model(model, config)
    peft_model.pemnb_kind = kind
    return peft_model


def _has_module(model, name: str) -> bool:
    return any(n == name or n.endswith("." + name) for n, _ in model.named_modules())


def kind_of(model) -> str:
    """The module kind `attach` gave this model."""
    kind = getattr(model, "pemnb_kind", None)
    if kind is None:
        raise ValueError("this model has no module attached; call pemnb.modules.attach(model, kind) first")
    return kind


def canonical_key(name: str) -> str:
    """Parameter name without peft's wrappers: 'base_model.model.', adapter name, modules_to_save."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    name = name.replace(".modules_to_save.default.", ".").replace(".default.", ".")
    if name.endswith(".default"):
        name = name[: -len(".default")]
    return name


def module_parameters(model) -> dict[str, torch.nn.Parameter]:
    """{canonical key: live Parameter} of the module's trainable parameters."""
    if kind_of(model) == "fft":
        return dict(model.named_parameters())
    return {canonical_key(n): p for n, p in model.named_parameters()
            if p.requires_grad and "original_module" not in n}


def read_state(model) -> dict[str, torch.Tensor]:
    """The module's state as a detached CPU copy (fft: the task vector τ = θ − θ_pre)."""
    params = module_parameters(model)
    if kind_of(model) == "fft":
        pre = getattr(model, _PRETRAINED)
        return {k: (p.detach() - pre[k]).cpu().clone() for k, p in params.items()}
    return {k: p.detach().cpu().clone() for k, p in params.items()}


@torch.no_grad()
def write_state(model, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a module state into the live model in place (no new adapter objects, no reload).

    This is what makes a λ sweep cheap: compose on the state dicts, then write. A sweep writing many
    states into one model builds one :class:`StateWriter` and calls it.
    """
    StateWriter(model)(state)


class StateWriter:
    """:func:`write_state` bound to one model: the module's live parameters are looked up once, and
    every write is one batched copy (``torch._foreach_copy_``). It checks kind, keys, shapes and finite
    values, and raises the errors :func:`pemnb.arithmetic.check_kind` raises.
    Build it after the module is attached and its trainable parameters are set; a writer does not see
    parameters frozen or unfrozen later (build a new one).
    """

    def __init__(self, model):
        self.kind = kind_of(model)
        params = module_parameters(model)
        self.keys = tuple(params)
        self._keyset = frozenset(self.keys)
        self._params = [params[k] for k in self.keys]
        pre = getattr(model, _PRETRAINED, None) if self.kind == "fft" else None
        self._pre = [pre[k].to(p.device) for k, p in zip(self.keys, self._params)] if pre is not None else None
        self._kind_checked = False

    @torch.no_grad()
    def __call__(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy `state` into the model's module in place."""
        if not self._kind_checked or state.keys() != self._keyset:
            check_kind(state, self.kind)  # roles depend on the keys only: once for the model's key set
            if state.keys() != self._keyset:
                raise ValueError(f"state does not fit this model: {_fit_report(state, self._keyset)}")
            self._kind_checked = True
        values = [state[k] for k in self.keys]
        if not all(torch.is_tensor(v) for v in values):
            check_kind(state, self.kind)  # raises the TypeError naming the key
        # Σ‖v‖² is finite iff every entry is (or it overflowed: then the exact check below just passes)
        if not math.isfinite(sum(float(torch.dot(v.reshape(-1), v.reshape(-1)))
                                 for v in values if v.is_floating_point() and v.numel())):
            check_kind(state, self.kind)  # raises the ValueError naming the key
        for k, v, p in zip(self.keys, values, self._params):
            if v.shape != p.shape:
                raise ValueError(f"{k}: state has shape {tuple(v.shape)}, model has {tuple(p.shape)}")
        values = [v if (v.dtype == p.dtype and v.device == p.device) else v.to(device=p.device, dtype=p.dtype)
                  for v, p in zip(values, self._params)]
        if self._pre is not None:
            values = torch._foreach_add(self._pre, values)
        torch._foreach_copy_(self._params, values)

    @torch.no_grad()
    def snapshot(self) -> list[torch.Tensor]:
        """A copy of the module's live parameters, for :meth:`restore` (raw values: no θ_pre subtracted)."""
        return [p.detach().clone() for p in self._params]

    @torch.no_grad()
    def restore(self, snapshot: list[torch.Tensor]) -> None:
        """Put back the parameters a :meth:`snapshot` of this writer copied, bit for bit."""
        if len(snapshot) != len(self._params):
            raise ValueError(f"snapshot has {len(snapshot)} tensors, the module {len(self._params)}")
        torch._foreach_copy_(self._params, snapshot)


def lora_scaling(model) -> float:
    """α/r of the attached LoRA module (the factor in ΔW = B·A·α/r)."""
    cfg = model.peft_config["default"]
    return cfg.lora_alpha / cfg.r


def save_module(path: str | Path, state: Mapping[str, torch.Tensor], kind: str, meta: Mapping | None = None) -> Path:
    """Write a module state as safetensors, with its kind and metadata in the header."""
    from safetensors.torch import save_file

    check_kind(state, kind)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp),
              metadata={"pemnb_kind": kind, "pemnb_meta": json.dumps(dict(meta or {}), default=str)})
    tmp.replace(path)
    return path


def load_module(path: str | Path) -> tuple[dict[str, torch.Tensor], str, dict]:
    """(state, kind, meta) from a safetensors file written by :func:`save_module` (no pickle involved)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    kind = header.get("pemnb_kind")
    if kind is None:
        raise ValueError(f"{path} was not written by pemnb.save_module (no pemnb_kind in its header)")
    check_kind(state, kind)
    return state, kind, json.loads(header.get("pemnb_meta", "{}"))


# ------------------------------------------------------------------------------ peft's adapter format
# A peft adapter folder: adapter_config.json (the peft config) + adapter_model.safetensors whose keys are
# pemnb's canonical keys under peft's wrapper prefix (peft strips the adapter name and the
# modules_to_save wrapper when it saves, so the head is 'base_model.model.classifier.weight').
PEFT_PREFIX = "base_model.model."
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, "adapter_model.bin")  # what an adapter folder holds
PEFT_TYPES = {"LORA": "lora", "IA3": "ia3"}


def _fit_report(state_keys, model_keys) -> str:
    """What is wrong when a state's keys are not the module's keys (names the keys)."""
    state_keys, model_keys = set(state_keys), set(model_keys)
    missing, extra = sorted(model_keys - state_keys), sorted(state_keys - model_keys)
    more = lambda xs: f"{xs[:3]}{' and %d more' % (len(xs) - 3) if len(xs) > 3 else ''}"  # noqa: E731
    if not state_keys & model_keys:
        hint = (" (these are peft-format keys: read the folder with pemnb.modules.import_peft)"
                if any(k.startswith(PEFT_PREFIX) for k in extra) else "")
        return (f"none of the state's {len(state_keys)} keys names a parameter of this model's module: "
                f"the state has {more(extra)}, the model has {more(missing)}{hint}")
    return f"missing {more(missing)}, unexpected {more(extra)}"


def export_peft(model, folder: str | Path, state: Mapping[str, torch.Tensor] | None = None, *,
                base_model_name_or_path: str | None = None) -> Path:
    """Write a module state (default: the model's own) as a standard peft adapter folder; returns it.

    ``adapter_config.json`` is the peft config the module was attached with (a classification head as
    ``modules_to_save``); ``adapter_model.safetensors`` holds the state under peft's ``base_model.model.``
    prefix, so ``PeftModel.from_pretrained(base, folder)`` computes what pemnb computes with the state
    written. A composed LoRA state of another rank (e.g. ``merge_methods.cat``) keeps each layer's
    scaling α/r: the config's r and α (and rank/alpha patterns for odd layers) follow the state.
    model: the model the state belongs to, with its module attached (``attach``).
    """
    from safetensors.torch import save_file

    kind = kind_of(model)
    if kind == "fft":
        raise ValueError("a full fine-tune is not a peft adapter; save it with pemnb.modules.save_finetuned")
    if state is not None and not isinstance(state, Mapping):
        raise TypeError(f"expected a module state (a dict of tensors), got {type(state).__name__}; a DenseDelta "
                        "(TIES, DARE, task_arith) becomes LoRA factors with pemnb.merge_methods.factorise")
    state = read_state(model) if state is None else dict(state)
    check_kind(state, kind)
    params = module_parameters(model)
    if state.keys() != params.keys():
        raise ValueError(f"state does not fit this model's {kind} module: {_fit_report(state, params)}")
    config = copy.deepcopy(model.peft_config["default"])
    config.inference_mode = True
    if base_model_name_or_path is not None:
        config.base_model_name_or_path = base_model_name_or_path
    for k, v in state.items():
        want = params[k].shape
        if kind == "lora" and role(k) == "lora_A" and v.shape[1:] != want[1:]:
            raise ValueError(f"{k}: state has shape {tuple(v.shape)}, the layer takes inputs of {want[1]}")
        if kind == "lora" and role(k) == "lora_B" and v.shape[:1] != want[:1]:
            raise ValueError(f"{k}: state has shape {tuple(v.shape)}, the layer has {want[0]} outputs")
        if not (kind == "lora" and role(k) in ("lora_A", "lora_B")) and v.shape != want:
            raise ValueError(f"{k}: state has shape {tuple(v.shape)}, model has {tuple(want)}")
    if kind == "lora":
        _lora_config_for(model, config, state)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    save_file({PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in state.items()},
              str(folder / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
    return folder


def _lora_config_for(model, config, state: Mapping[str, torch.Tensor]) -> None:
    """Set r, lora_alpha, rank_pattern and alpha_pattern so every layer has the state's rank and the
    live layer's scaling (peft: scaling = α/r, or α/√r with rslora)."""
    from collections import Counter

    from .arithmetic import lora_pairs

    scale = {canonical_key(n): m.scaling["default"] for n, m in model.named_modules()
             if hasattr(m, "lora_A") and hasattr(m, "scaling") and "default" in getattr(m, "scaling", {})}
    ranks = {t: int(a.shape[0]) for t, (a, _) in lora_pairs(state).items()}
    root = math.sqrt if config.use_rslora else (lambda r: r)
    alphas = {t: (int(a) if float(a).is_integer() else a) for t, a in
              ((t, scale[t] * root(r)) for t, r in ranks.items())}
    r0 = Counter(ranks.values()).most_common(1)[0][0]
    a0 = Counter(alphas[t] for t in ranks if ranks[t] == r0).most_common(1)[0][0]
    config.r, config.lora_alpha = r0, a0
    config.rank_pattern = {t: r for t, r in ranks.items() if r != r0}
    config.alpha_pattern = {t: a for t, a in alphas.items() if a != a0}


def import_peft(folder: str | Path) -> tuple[dict[str, torch.Tensor], str, dict]:
    """(state, kind, peft config as a dict) of a peft LoRA or (IA)³ adapter folder (any writer: peft's
    ``save_pretrained``, :func:`export_peft`, a hub download). Keys become pemnb's canonical keys.

    Reads ``adapter_model.safetensors``, else an older ``adapter_model.bin`` (tensors only,
    ``torch.load(weights_only=True)``).
    """
    folder = Path(folder)
    cfg_path = folder / PEFT_CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} is not a peft adapter folder: no {PEFT_CONFIG_FILE}")
    config = json.loads(cfg_path.read_text())
    kind = PEFT_TYPES.get(config.get("peft_type"))
    if kind is None:
        raise ValueError(f"{cfg_path}: peft_type {config.get('peft_type')!r} is not a module pemnb composes "
                         f"(expected one of {sorted(PEFT_TYPES)})")
    if config.get("use_dora"):
        raise ValueError(f"{cfg_path}: a DoRA adapter (use_dora) has magnitude vectors pemnb's LoRA "
                         "arithmetic does not define")
    if (folder / PEFT_WEIGHTS_FILE).is_file():
        from safetensors.torch import load_file

        raw = load_file(str(folder / PEFT_WEIGHTS_FILE))
    elif (folder / "adapter_model.bin").is_file():
        raw = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder}: no {PEFT_WEIGHTS_FILE} (or adapter_model.bin)")
    state = {canonical_key(k): v for k, v in raw.items()}
    if len(state) != len(raw):
        raise ValueError(f"{folder}: keys collide once peft's wrappers are stripped")
    check_kind(state, kind)
    return state, kind, config


def attach_peft(model, folder: str | Path):
    """Attach the module of a peft adapter folder to `model` (a base model) with the folder's own
    config, write its weights, and return the model to compose with (as :func:`attach` would)."""
    from peft import PeftConfig, get_peft_model

    state, kind, _ = import_peft(folder)
    config = PeftConfig.from_pretrained(str(folder))
    config.inference_mode = False  # the module's parameters are what read_state/write_state see
    with _quiet_peft():
        peft_model = get_peft_model(model, config)
    peft_model.pemnb_kind = kind
    write_state(peft_model, state)
    return peft_model


@torch.no_grad()
def save_finetuned(model, folder: str | Path, tau: Mapping[str, torch.Tensor] | None = None, **save_kwargs) -> Path:
    """Save θ_pre + τ (a composed full fine-tune, e.g. θ_pre − λτ = ``negate(τ, "fft", λ)``) as a
    transformers model folder with ``save_pretrained``; ``from_pretrained`` reloads it. Returns the folder.

    model: a model attached with ``kind="fft"`` (it remembers θ_pre); it is not changed — the weights
    are written into a copy. tau: the task vector to apply (default: the model's own τ).
    """
    if kind_of(model) != "fft":
        raise ValueError(f"save_finetuned saves full fine-tunes; this model carries a {kind_of(model)!r} "
                         "module (export it with pemnb.modules.export_peft)")
    tau = read_state(model) if tau is None else dict(tau)
    check_kind(tau, "fft")
    pre = getattr(model, _PRETRAINED)
    if tau.keys() != pre.keys():
        raise ValueError(f"task vector does not fit this model: {_fit_report(tau, pre)}")
    delattr(model, _PRETRAINED)  # not copied: θ_pre is read from the original below
    try:
        clone = copy.deepcopy(model)
    finally:
        setattr(model, _PRETRAINED, pre)
    del clone.pemnb_kind
    for name, p in clone.named_parameters():
        if tau[name].shape != p.shape:
            raise ValueError(f"{name}: τ has shape {tuple(tau[name].shape)}, model has {tuple(p.shape)}")
        p.copy_(pre[name].to(p.device) + tau[name].to(device=p.device, dtype=p.dtype))
    folder = Path(folder)
    clone.save_pretrained(str(folder), **save_kwargs)
    return folder


@torch.no_grad()
def peft_round_trip(model, state: Mapping[str, torch.Tensor], base, inputs: Mapping[str, torch.Tensor],
                    folder: str | Path | None = None) -> float:
    """max |Δlogits| on `inputs` between pemnb (`state` written into `model`) and stock peft (`state`
    exported with :func:`export_peft`, loaded into `base` by ``PeftModel.from_pretrained``); 0.0 means
    identical outputs. `model` is left as it was; `base` is a fresh copy of the backbone (it gets the
    adapter injected). folder: where the adapter goes (default: a temporary folder, removed after).
    """
    import tempfile

    from peft import PeftModel

    writer = StateWriter(model)
    saved = writer.snapshot()
    was_training = model.training
    try:
        writer(state)
        model.eval()
        device = next(model.parameters()).device
        ours = model(**{k: v.to(device) for k, v in inputs.items()}).logits
    finally:
        writer.restore(saved)
        model.train(was_training)
    with tempfile.TemporaryDirectory() as tmp, _quiet_peft():
        loaded = PeftModel.from_pretrained(base, str(export_peft(model, folder or tmp, state))).eval()
        device = next(loaded.parameters()).device
        theirs = loaded(**{k: v.to(device) for k, v in inputs.items()}).logits
    return float((ours.float().cpu() - theirs.float().cpu()).abs().max())
