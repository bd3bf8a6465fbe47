"""The λ sweep, the one every chapter runs: for each λ, compose the module state, write it into the live
model in place (no new adapter objects, no reload) and score it (:func:`sweep`).

``compose(λ)`` returns a module state or a :class:`pemnb.merge_methods.DenseDelta` (added to the base
weights for the evaluation and taken off again, see :func:`delta_applied`). ``score(composed)`` is the
one way to evaluate a state: a bench's ``scorer`` (:class:`pemnb.classify.ClassifierBench`,
:class:`pemnb.generative.DecoderBench`: written in place, cached), or :func:`in_place` over a bare model
with an ``evaluate(model)`` such as ``functools.partial(pemnb.evaluate.classify, batches=..., task=...)``.
:func:`restored` gives the model its module back afterwards.

Two pieces keep the per-λ overhead (everything but the evaluation) to a fraction of a millisecond on a
small model: :class:`pemnb.modules.StateWriter` is ``write_state`` bound to one model (the parameters
are looked up once, not on every write), and :func:`pair` composes two modules along λ with the checks
done once per sweep instead of once per point (its results equal :mod:`pemnb.merge_methods`' bit for bit).
"""
from __future__ import annotations

import functools
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch

from .arithmetic import check_weights, check_compatible, role
from .merge_methods import DenseDelta
from .modules import StateWriter, canonical_key, kind_of, module_parameters, read_state, write_state

Composed = Mapping[str, torch.Tensor] | DenseDelta


class WritesInPlace:
    """For benches holding a live ``self.model``: :meth:`use` writes a module state through one
    :class:`StateWriter`, built on first use and dropped by :meth:`forget_writer` (after training, which
    may replace parameter objects)."""

    _writer: StateWriter | None = None

    def use(self, state: Mapping[str, torch.Tensor]) -> None:
        """Put a module state into the live model in place (one batched copy)."""
        if self._writer is None:
            self._writer = StateWriter(self.model)
        self._writer(state)

    def forget_writer(self) -> None:
        self._writer = None


_PAIR_METHODS = ("paper", "linear")


def pair(method: str, theta1: Mapping[str, torch.Tensor], theta2: Mapping[str, torch.Tensor]
         ) -> Callable[[float], dict[str, torch.Tensor]]:
    """``compose(λ)`` for a sweep of θ(λ) = method(θ₁, θ₂ with weights λ, 1−λ), for method 'paper' (the
    paper's Eq. 2: λθ₁ + (1−λ)θ₂ on every tensor) or 'linear' (peft's ``linear``).

    The states are checked once here; each call is then a few batched tensor operations
    (``torch._foreach_mul``/``_foreach_add_``) whose result equals
    ``pemnb.merge_methods.compose(method, [θ₁, θ₂], [λ, 1−λ])`` bit for bit. The states must not be
    modified while the returned function is in use.
    """
    if method not in _PAIR_METHODS:
        raise ValueError(f"pair composes {_PAIR_METHODS}; use pemnb.merge_methods.compose for {method!r}")
    check_compatible([theta1, theta2], "lora")
    keys = list(theta1)
    roles = [role(k) for k in keys]
    first, second = [theta1[k] for k in keys], [theta2[k] for k in keys]

    def coefficients(w: float) -> list[float]:
        if method == "paper":
            return [w] * len(keys)
        root = math.sqrt(abs(w))
        return [math.copysign(root, w) if r == "lora_A" else root if r == "lora_B" else w for r in roles]

    def compose(lam: float) -> dict[str, torch.Tensor]:
        w1, w2 = check_weights([lam, 1 - lam], 2)
        out = torch._foreach_mul(first, coefficients(w1))
        torch._foreach_add_(out, torch._foreach_mul(second, coefficients(w2)))
        return dict(zip(keys, out))

    return compose


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


def apply_and_evaluate(model, composed: Composed, evaluate: Callable[[object], Mapping[str, float]], *,
                       writer: StateWriter | None = None) -> dict:
    """Put `composed` (a state or a DenseDelta) into the live model and return ``evaluate(model)``.

    writer: a :class:`StateWriter` of `model` to write states with (default: ``write_state``)."""
    if isinstance(composed, DenseDelta):
        with delta_applied(model, composed):
            return dict(evaluate(model))
    (writer or functools.partial(write_state, model))(composed)
    return dict(evaluate(model))


def sweep(compose: Callable[[float], Composed], grid: Iterable[float],
          score: Callable[[Composed], Mapping[str, Any]], *, progress: bool = True, desc: str = "λ sweep",
          timings: bool = False, **labels) -> list[dict]:
    """The λ sweep — every chapter's: rows ``{lam, **labels, **score(compose(λ))}``, one per λ in `grid`.

    `score` is the one way a chapter scores a composed state: a bench's :meth:`scorer` (the state is
    written into the bench's live model in place and evaluated, cached), or :func:`in_place` over a bare
    live model. Nothing is loaded or created per λ.
    timings: add ``compose_s`` (time to compose) and ``eval_s`` (time to score) to each row.
    """
    from .progress import tqdm

    grid = [float(lam) for lam in grid]
    if not grid:
        raise ValueError("the λ grid is empty")
    rows = []
    for lam in tqdm(grid, desc=desc, disable=not progress):
        t0 = time.perf_counter()
        composed = compose(lam)
        t1 = time.perf_counter()
        row = {"lam": lam, **labels, **score(composed)}
        if timings:
            row.update(compose_s=t1 - t0, eval_s=time.perf_counter() - t1)
        rows.append(row)
    return rows


def in_place(model, evaluate: Callable[[object], Mapping[str, float]], writer: StateWriter | None = None
             ) -> Callable[[Composed], dict]:
    """`score` for :func:`sweep` over a bare live model: the composed state is written in place (a
    :class:`DenseDelta` applied for the evaluation only) and ``evaluate(model)`` scores it.
    writer: a :class:`StateWriter` of `model` to reuse (default: a new one)."""
    writer = writer if writer is not None else StateWriter(model)
    return functools.partial(_write_and_evaluate, model, evaluate, writer)


def _write_and_evaluate(model, evaluate, writer, composed):
    return apply_and_evaluate(model, composed, evaluate, writer=writer)


@contextmanager
def restored(model_or_writer):
    """Within the block a live model's module may be overwritten; on exit it holds the state it had
    before, bit for bit (one snapshot, one batched copy back)."""
    writer = model_or_writer if isinstance(model_or_writer, StateWriter) else StateWriter(model_or_writer)
    before = writer.snapshot()
    try:
        yield writer
    finally:
        writer.restore(before)


# ------------------------------------------------------------------------------- the best λ only
@dataclass(frozen=True)
class GridSearch:
    """What :func:`coarse_to_fine` found: the best λ of the grid and every score it evaluated."""

    best: float
    scores: dict[float, float]   # {λ: score} of the evaluated points, in evaluation order
    grid_points: int             # the full grid's size, for comparison

    @property
    def evaluated(self) -> int:
        return len(self.scores)


def coarse_to_fine(score: Callable[[float], float], grid: Iterable[float], *, coarse_points: int = 5,
                   prefer: Callable[[float], Any] | None = None) -> GridSearch:
    """The grid point with the highest ``score(λ)``, found with fewer evaluations than the whole grid
    when the curve is unimodal: for selecting λ on held-out rows, where only the best λ is needed
    (figures that show the whole curve still sweep the whole grid).

    1. score `coarse_points` evenly spaced grid points (the ends included);
    2. bracket the best by its evaluated neighbours and score the grid point halfway to each; repeat
       until both neighbours are adjacent grid points (≈ 2·log₂(gap) more points);
    3. ties: among equal scores the smallest ``prefer(λ)`` wins (default: the smaller λ, as a full-grid
       argmax gives); grid neighbours of the best that `prefer` ranks higher are scored too, and taken
       while they tie, so a flat top resolves as the full grid would resolve it.

    On a unimodal curve (rising, then falling, flat top allowed) this returns the full grid's choice;
    on a noisy curve a local maximum can win, so check it against the full grid where that matters.
    On an 11-point grid it scores at most 9 points, on a 51-point grid about 13.
    """
    grid = sorted({float(x) for x in grid})
    if not grid:
        raise ValueError("the λ grid is empty")
    if coarse_points < 2:
        raise ValueError(f"coarse_points must be at least 2, got {coarse_points}")
    prefer = prefer or (lambda lam: lam)
    scores: dict[float, float] = {}

    def at(i: int) -> float:
        lam = grid[i]
        if lam not in scores:
            value = float(score(lam))
            if math.isnan(value):
                raise ValueError(f"score({lam}) is NaN")
            scores[lam] = value
        return scores[lam]

    def rank(i: int):  # the best index has the smallest rank
        return (-at(i), prefer(grid[i]))

    n = len(grid)
    done = sorted({int(round(x)) for x in (i * (n - 1) / (coarse_points - 1) for i in range(coarse_points))}
                  if n > coarse_points else range(n))
    best = min(done, key=rank)
    while True:
        lo = max((i for i in done if i < best), default=None)
        hi = min((i for i in done if i > best), default=None)
        new = [(a + b) // 2 for a, b in ((lo, best), (best, hi)) if a is not None and b is not None and b - a > 1]
        if not new:
            break
        done = sorted(set(done) | set(new))
        best = min(done, key=rank)
    # A flat top: walk towards the preferred side while the neighbours tie.
    while True:
        nxt = [i for i in (best - 1, best + 1) if 0 <= i < n and prefer(grid[i]) < prefer(grid[best])]
        nxt = [i for i in nxt if at(i) >= at(best)]
        if not nxt:
            break
        best = min(nxt, key=rank)
    return GridSearch(grid[best], scores, n)


def best_lambda(compose: Callable[[float], Composed], grid: Iterable[float],
                score: Callable[[Composed], Mapping[str, Any]], metric: str, *, coarse_points: int = 5,
                prefer: Callable[[float], Any] | None = None) -> tuple[GridSearch, list[dict]]:
    """:func:`coarse_to_fine` with :func:`sweep`'s `compose` and `score`: (the search, rows
    ``{lam, **metrics}`` of the λ it evaluated), `metric` maximised."""
    rows: dict[float, dict] = {}

    def value(lam: float) -> float:
        metrics = score(compose(lam))
        if metric not in metrics:
            raise KeyError(f"the score returned no {metric!r}: {sorted(metrics)}")
        rows[lam] = {"lam": lam, **metrics}
        return float(metrics[metric])

    found = coarse_to_fine(value, grid, coarse_points=coarse_points, prefer=prefer)
    return found, list(rows.values())
