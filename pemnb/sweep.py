"""The λ-sweep engine: load the backbone once, and for each λ write the composed module into the live
model in place (no new adapter objects, no reload), then evaluate.

``compose(λ)`` returns either a module state (written with :func:`pemnb.modules.write_state`) or a
:class:`pemnb.merge_methods.DenseDelta` (added to the base weights for the evaluation and taken off
again, see :func:`delta_applied`). ``evaluate(model)`` returns a dict of metrics, e.g.
``functools.partial(pemnb.evaluate.classify, batches=..., task=...)`` over
:class:`pemnb.evaluate.EvalBatches` built once before the sweep.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterable, Mapping

import torch

from .arithmetic import role
from .merge_methods import DenseDelta
from .modules import canonical_key, kind_of, read_state, write_state

Composed = Mapping[str, torch.Tensor] | DenseDelta


def lora_layers(model) -> dict[str, torch.nn.Module]:
    """{canonical layer name: peft LoRA layer} of a model with a LoRA module attached."""
    if kind_of(model) != "lora":
        raise ValueError(f"the model carries a {kind_of(model)!r} module; dense updates need a LoRA one")
    out = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and hasattr(mod, "get_base_layer"):
            out[canonical_key(name)] = mod
    return out


@contextmanager
@torch.no_grad()
def delta_applied(model, delta: DenseDelta):
    """Within the block the model computes with W + ΔW on every layer of `delta` (and the LoRA factors
    contribute nothing); on exit the base weights and the module state are restored bit for bit.

    This evaluates a method that returns dense updates (TIES, DARE, exact ΔW sums of any rank) on the
    live model without new adapter objects. The module's LoRA B factors are zeroed meanwhile, and
    ``delta.extras`` (a head) is written into the module.
    """
    if not isinstance(delta, DenseDelta):
        raise TypeError(f"expected a DenseDelta, got {type(delta).__name__}")
    layers = lora_layers(model)
    unknown = sorted(set(delta.layers) - set(layers))
    if unknown:
        raise ValueError(f"ΔW for layers the model has no LoRA on: {unknown[:3]}")
    saved_state = read_state(model)
    extra_keys = {k for k in saved_state if role(k) == "other"}
    if set(delta.extras) - extra_keys:
        raise ValueError(f"extras the module does not have: {sorted(set(delta.extras) - extra_keys)[:3]}")
    silent = {k: (torch.zeros_like(v) if role(k) == "lora_B" else v) for k, v in saved_state.items()}
    silent.update(delta.extras)
    saved_weights = {}
    try:
        write_state(model, silent)
        for t, dw in delta.layers.items():
            layer = layers[t]
            w = layer.get_base_layer().weight
            if getattr(layer, "fan_in_fan_out", False):  # GPT-2's Conv1D stores W transposed
                dw = dw.T
            if dw.shape != w.shape:
                raise ValueError(f"{t}: ΔW has shape {tuple(dw.shape)}, the weight has {tuple(w.shape)}")
            saved_weights[t] = w.detach().clone()
            w.add_(dw.to(device=w.device, dtype=w.dtype))
        yield model
    finally:
        for t, original in saved_weights.items():
            layers[t].get_base_layer().weight.copy_(original)
        write_state(model, saved_state)


def apply_and_evaluate(model, composed: Composed, evaluate: Callable[[object], Mapping[str, float]]) -> dict:
    """Put `composed` (a state or a DenseDelta) into the live model and return ``evaluate(model)``."""
    if isinstance(composed, DenseDelta):
        with delta_applied(model, composed):
            return dict(evaluate(model))
    write_state(model, composed)
    return dict(evaluate(model))


def sweep(model, compose: Callable[[float], Composed], grid: Iterable[float],
          evaluate: Callable[[object], Mapping[str, float]], *, progress: bool = True, desc: str = "λ sweep",
          restore: bool = True, timings: bool = False, **labels) -> list[dict]:
    """Rows ``{lam, **labels, **metrics}``, one per λ in `grid`: ``compose(λ)`` is written into the live
    `model` in place and ``evaluate(model)`` scores it.

    The model is loaded once by the caller; no adapter is created and nothing is reloaded per λ.
    restore: write the module state the model had before the sweep back at the end.
    timings: add ``compose_s`` (time to compose) and ``eval_s`` (write + evaluate) to each row.
    """
    from tqdm.auto import tqdm

    grid = [float(lam) for lam in grid]
    if not grid:
        raise ValueError("the λ grid is empty")
    before = read_state(model) if restore else None
    rows = []
    try:
        for lam in tqdm(grid, desc=desc, disable=not progress):
            t0 = time.perf_counter()
            composed = compose(lam)
            t1 = time.perf_counter()
            metrics = apply_and_evaluate(model, composed, evaluate)
            row = {"lam": lam, **labels, **metrics}
            if timings:
                row.update(compose_s=t1 - t0, eval_s=time.perf_counter() - t1)
            rows.append(row)
    finally:
        if before is not None:
            write_state(model, before)
    return rows

