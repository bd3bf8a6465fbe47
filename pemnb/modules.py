"""The only place that touches peft: attach a module, read and write its state, save and load it.

A module's *state* is a plain ``dict[str, Tensor]`` with canonical keys (peft's adapter name and
``modules_to_save`` wrappers stripped), so :mod:`pemnb.arithmetic` can compose it without a model.
For a full fine-tune (``kind="fft"``) the state is the task vector τ = θ_ft − θ_pre.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import torch

from .arithmetic import KINDS, check_kind
from .backbones import HEAD_MODULES, IA3_TARGETS, LORA_TARGETS, family_of

_PRETRAINED = "_pemnb_pretrained"


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
                missing, extra = sorted(self._keyset - set(state)), sorted(set(state) - self._keyset)
                raise ValueError(f"state does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}")
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


def trainable_count(model) -> int:
    """Number of trainable parameters (the module's size)."""
    return sum(p.numel() for p in module_parameters(model).values())


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
