"""Ways to compose LoRA modules, as pure functions on module states. No models here.

The paper adds LoRA modules factor by factor (A with A, B with B), which puts cross terms B₁A₂ + B₂A₁
into ΔW. The other methods a practitioner meets (peft's ``add_weighted_adapter``, mergekit) make
other trade-offs; each one is registered here under its name, with its source:

==========  ==============  ===========================================================================
name        returns         what ΔW it gives (wᵢ the weights, s = α/r the LoRA scaling)
==========  ==============  ===========================================================================
paper       LoRA, rank r    s·(Σ wᵢBᵢ)(Σ wᵢAᵢ) — cross terms (Zhang et al. 2023, Eq. 2)
linear      LoRA, rank r    s·(Σ √|wᵢ|Bᵢ)(Σ sign(wᵢ)√|wᵢ|Aᵢ) — other cross terms (peft ``linear``)
cat         LoRA, rank Σrᵢ  s·Σ wᵢBᵢAᵢ exactly; the rank grows (peft ``cat``)
svd         LoRA, rank k    best rank-k approximation of s·Σ wᵢBᵢAᵢ (peft ``svd``); exact when k ≥ its rank
task_arith  DenseDelta      s·Σ wᵢBᵢAᵢ exactly, dense (Ilharco et al. 2023, task arithmetic)
ties        DenseDelta      trim, elect sign, disjoint merge of the ΔWᵢ (Yadav et al. 2023)
dare        DenseDelta      drop entries of each ΔWᵢ with prob. p, rescale by 1/(1−p), add (Yu et al. 2024)
==========  ==============  ===========================================================================

States are ``dict[str, Tensor]`` in pemnb's canonical LoRA layout (``<layer>.lora_A.weight`` of shape
(r, d_in), ``<layer>.lora_B.weight`` of shape (d_out, r)). Methods that return LoRA factors keep the
inputs' scaling s (write them into a model whose α/r equals s; for ``cat`` at rank Σrᵢ that means
α = s·Σrᵢ). Methods that return a dense update say so with their type, :class:`DenseDelta`, whose ΔW
already includes s. Extra tensors of a state (a classification head) are combined as Σ wᵢ·hᵢ by every
method. To evaluate a DenseDelta on a live model use :func:`pemnb.sweep.delta_applied` (adds ΔW to the
base weights and restores them) or :func:`factorise` it back into LoRA factors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from .arithmetic import State, check_weights, add, check_compatible, lora_pairs, role


@dataclass(frozen=True)
class DenseDelta:
    """A composed module given as dense weight updates: W ← W + layers[name] for each adapted layer.

    layers: {layer name: ΔW of shape (d_out, d_in)}, scaling already applied.
    extras: the non-LoRA tensors of the module (e.g. a classification head), to be written as they are.
    """

    layers: dict[str, torch.Tensor]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A registered composition method."""

    name: str
    fn: Callable
    returns: str       # "lora" (a module state) or "delta" (a DenseDelta)
    reference: str
    # prepare(states, **kwargs) -> (weights -> result): the weight-independent work done once (see
    # :func:`prepare`); None when the method has none worth keeping.
    prepare: Callable | None = None


METHODS: dict[str, Method] = {}


def register(name: str, returns: str, reference: str, prepare: Callable | None = None):
    """Decorator: add a composition function to :data:`METHODS` under `name` (with its `prepare` hook,
    a function of the states and keyword arguments returning the function of the weights)."""
    if returns not in ("lora", "delta"):
        raise ValueError(f"returns must be 'lora' or 'delta', got {returns!r}")

    def deco(fn):
        if name in METHODS:
            raise ValueError(f"a method named {name!r} is already registered")
        METHODS[name] = Method(name, fn, returns, reference, prepare)
        return fn

    return deco


def _method(method: str) -> Method:
    if method not in METHODS:
        raise ValueError(f"unknown composition method {method!r}; known: {sorted(METHODS)}")
    return METHODS[method]


def compose(method: str, states: Sequence[State], weights: Sequence[float], **kwargs):
    """Compose `states` with `weights` by the registered `method` (see the table in the module doc)."""
    return _method(method).fn(states, weights, **kwargs)


def prepare(method: str, states: Sequence[State], **kwargs) -> Callable[[Sequence[float]], object]:
    """``f(weights)`` equal to ``compose(method, states, weights, **kwargs)`` (bit for bit), for a sweep
    over many weight vectors: what does not depend on the weights — the checks, the dense ΔWᵢ = s·BᵢAᵢ,
    TIES' top-k trims, DARE's drop masks — is computed once here instead of once per point.

    The states must not be modified while `f` is in use.
    """
    m = _method(method)
    if m.prepare is not None:
        return m.prepare(states, **kwargs)
    check_compatible(states, "lora")  # fail here, not at the first point
    return lambda weights: m.fn(states, weights, **kwargs)


# ------------------------------------------------------------------------------------------- helpers
def _prepare(states: Sequence[State], weights: Sequence[float]) -> list[float]:
    check_compatible(states, "lora")
    return check_weights(weights, len(states))


def _extras(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Σ wᵢ·hᵢ for every non-LoRA tensor (heads)."""
    return {k: sum(w * s[k] for w, s in zip(weights, states)) for k in states[0] if role(k) == "other"}


def _check_scaling(scaling: float) -> float:
    scaling = float(scaling)
    if not math.isfinite(scaling) or scaling <= 0:
        raise ValueError(f"scaling (α/r) must be a positive finite number, got {scaling}")
    return scaling


def _check_fraction(name: str, value: float, low_open: bool) -> float:
    value = float(value)
    ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value < 1.0)
    if not ok:
        raise ValueError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1)'}, got {value}")
    return value


def rank_of(state: State) -> int:
    """The LoRA rank r of a state (rows of its A factors); raises if layers disagree."""
    ranks = {a.shape[0] for a, _ in lora_pairs(state).values()}
    if len(ranks) != 1:
        raise ValueError(f"layers have different ranks {sorted(ranks)}")
    return ranks.pop()


def dense(state: State, scaling: float) -> DenseDelta:
    """The DenseDelta of one LoRA state: ΔW = s·B·A per layer, extras copied."""
    scaling = _check_scaling(scaling)
    check_compatible([state], "lora")
    return DenseDelta({t: scaling * (b @ a) for t, (a, b) in lora_pairs(state).items()},
                      {k: v.clone() for k, v in state.items() if role(k) == "other"})


def factorise(delta: DenseDelta, rank: int, scaling: float) -> dict[str, torch.Tensor]:
    """A LoRA state of rank `rank` whose s·B·A is the best rank-`rank` approximation of each ΔW.

    Truncated SVD ΔW/s ≈ U_k S_k V_kᵀ (Eckart–Young), split evenly: B = U_k √S_k, A = √S_k V_kᵀ, so both
    factors have the same scale (peft's ``svd`` puts all of S on B; the product is the same).
    Exact to float precision when rank ≥ rank(ΔW).
    """
    scaling = _check_scaling(scaling)
    if not delta.layers:
        raise ValueError("the DenseDelta has no layers")
    out: dict[str, torch.Tensor] = {}
    for t, dw in delta.layers.items():
        if dw.dim() != 2:
            raise ValueError(f"{t}: ΔW must be a matrix, got shape {tuple(dw.shape)}")
        if not 1 <= rank <= min(dw.shape):
            raise ValueError(f"{t}: rank must be in [1, {min(dw.shape)}] for ΔW of shape {tuple(dw.shape)}, "
                             f"got {rank}")
        u, s, vh = torch.linalg.svd(dw.double() / scaling, full_matrices=False)
        root = s[:rank].sqrt()
        out[f"{t}.lora_A.weight"] = (root[:, None] * vh[:rank]).to(dw.dtype)
        out[f"{t}.lora_B.weight"] = (u[:, :rank] * root[None, :]).to(dw.dtype)
    out.update({k: v.clone() for k, v in delta.extras.items()})
    return out


# ------------------------------------------------------------------------------------------- methods
@register("paper", "lora", "Zhang et al. (2023), Eq. 2; pemnb.arithmetic.add")
def paper(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The paper's addition: A = Σ wᵢAᵢ and B = Σ wᵢBᵢ separately (Zhang et al. 2023, Eq. 2).

    ΔW = s·(Σ wᵢBᵢ)(Σ wᵢAᵢ) = s·Σ wᵢ²BᵢAᵢ + s·Σ_{i≠j} wᵢwⱼBᵢAⱼ: the cross terms BᵢAⱼ are not in
    Σ wᵢΔWᵢ. Weights are used as given (no normalisation), as :func:`pemnb.arithmetic.merge` does.
    """
    return add(states, weights, "lora", normalize=False)


@register("linear", "lora", "peft LoraModel.add_weighted_adapter(combination_type='linear')")
def linear(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """peft's ``linear``: each weight split as √|w| over the two factors, its sign on A.

    A = Σ sign(wᵢ)√|wᵢ|·Aᵢ, B = Σ √|wᵢ|·Bᵢ, so ΔW = s·Σ wᵢBᵢAᵢ + cross terms s·Σ_{i≠j} √|wᵢwⱼ| sign(wⱼ) BᵢAⱼ
    (peft/tuners/lora/model.py, ``_generalized_task_arithmetic_weighted_adapter`` with
    ``task_arithmetic`` from peft/utils/merge_utils.py; peft also moves s into the factors and sets
    α = r, which gives the same ΔW).
    """
    weights = _prepare(states, weights)
    root = [math.sqrt(abs(w)) for w in weights]
    signed = [math.copysign(r, w) for r, w in zip(root, weights)]
    out = {}
    for k in states[0]:
        r = role(k)
        coef = signed if r == "lora_A" else root if r == "lora_B" else weights
        out[k] = sum(c * s[k] for c, s in zip(coef, states))
    return out


@register("cat", "lora", "peft LoraModel.add_weighted_adapter(combination_type='cat')")
def cat(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Exact addition by rank concatenation: A = [w₁A₁; w₂A₂; …] (rows), B = [B₁, B₂, …] (columns).

    B·A = Σ wᵢBᵢAᵢ, so ΔW = s·Σ wᵢBᵢAᵢ with no cross terms, at rank Σrᵢ (peft's ``cat``). To run it in
    peft, attach LoRA with r = Σrᵢ and α = s·Σrᵢ so the scaling s is unchanged.
    """
    weights = _prepare(states, weights)
    out = {}
    for k in states[0]:
        r = role(k)
        if r == "lora_A":
            out[k] = torch.cat([w * s[k] for w, s in zip(weights, states)], dim=0)
        elif r == "lora_B":
            out[k] = torch.cat([s[k] for s in states], dim=1)
    out.update(_extras(states, weights))
    return out


def _prepare_task_arith(states: Sequence[State], *, scaling: float) -> Callable[[Sequence[float]], DenseDelta]:
    deltas = [dense(s, scaling) for s in states]  # checks the states; the ΔWᵢ do not depend on the weights

    def at(weights: Sequence[float]) -> DenseDelta:
        weights = check_weights(weights, len(states))
        return DenseDelta({t: sum(w * d.layers[t] for w, d in zip(weights, deltas)) for t in deltas[0].layers},
                          _extras(states, weights))

    return at


@register("task_arith", "delta", "Ilharco et al. (2023), Editing models with task arithmetic; peft task_arithmetic",
          prepare=_prepare_task_arith)
def task_arith(states: Sequence[State], weights: Sequence[float], *, scaling: float) -> DenseDelta:
    """Exact addition of the updates, as dense matrices: ΔW = Σ wᵢ·s·BᵢAᵢ per layer."""
    return _prepare_task_arith(states, scaling=scaling)(weights)


def _prepare_svd(states: Sequence[State], *, scaling: float,
                 rank: int | None = None) -> Callable[[Sequence[float]], dict[str, torch.Tensor]]:
    exact = _prepare_task_arith(states, scaling=scaling)
    rank = rank_of(states[0]) if rank is None else int(rank)
    return lambda weights: factorise(exact(weights), rank, scaling)  # the SVD depends on the weights


@register("svd", "lora", "peft LoraModel.add_weighted_adapter(combination_type='svd'); Eckart–Young",
          prepare=_prepare_svd)
def svd(states: Sequence[State], weights: Sequence[float], *, scaling: float,
        rank: int | None = None) -> dict[str, torch.Tensor]:
    """Exact ΔW addition, truncated back to rank `rank` (default: the inputs' r) by SVD.

    The result fits the live model's LoRA (same r, same s). Exact when rank ≥ rank(Σ wᵢBᵢAᵢ), e.g.
    rank = Σrᵢ; otherwise the best rank-`rank` approximation in Frobenius norm.
    """
    return _prepare_svd(states, scaling=scaling, rank=rank)(weights)


def _trim(dw: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the round(density·n) entries of largest magnitude, zero the rest (TIES' trim step)."""
    k = int(round(density * dw.numel()))
    if k >= dw.numel():
        return dw.clone()
    mask = torch.zeros(dw.numel(), dtype=torch.bool, device=dw.device)
    mask[dw.abs().flatten().topk(k).indices] = True
    return dw * mask.view_as(dw)


def _prepare_ties(states: Sequence[State], *, scaling: float, density: float = 0.2, majority: str = "total",
                  normalize: bool = False) -> Callable[[Sequence[float]], DenseDelta]:
    density = _check_fraction("density", density, low_open=True)
    if majority not in ("total", "frequency"):
        raise ValueError(f"majority must be 'total' or 'frequency', got {majority!r}")
    deltas = [dense(s, scaling) for s in states]
    # Weight-independent: the ΔWᵢ and their top-k trims (most of TIES' cost).
    trimmed = {t: torch.stack([_trim(d.layers[t], density) for d in deltas]).double() for t in deltas[0].layers}
    dtypes = {t: dw.dtype for t, dw in deltas[0].layers.items()}

    def at(weights: Sequence[float]) -> DenseDelta:
        weights = check_weights(weights, len(states))
        w = torch.tensor(weights, dtype=torch.float64).view(-1, 1, 1)
        layers = {}
        for t, stacked in trimmed.items():
            # The sign vote depends on the weights (their sizes for 'total', their signs for 'frequency').
            weighted = stacked * w
            elect = weighted.sum(0) if majority == "total" else weighted.sign().sum(0)
            # (a trimmed-away or zero-weighted entry has sign 0, which is never the elected ±1)
            keep = weighted.sign() == torch.where(elect >= 0, 1.0, -1.0)
            merged = (weighted * keep).sum(0)
            if normalize:
                divisor = (w * keep).sum(0)
                merged = merged / torch.where(divisor.abs() < 1e-12, torch.ones_like(divisor), divisor)
            layers[t] = merged.to(dtypes[t])
        return DenseDelta(layers, _extras(states, weights))

    return at


@register("ties", "delta", "Yadav et al. (2023), TIES-Merging (NeurIPS); mergekit generalized_task_arithmetic",
          prepare=_prepare_ties)
def ties(states: Sequence[State], weights: Sequence[float], *, scaling: float, density: float = 0.2,
         majority: str = "total", normalize: bool = False) -> DenseDelta:
    """TIES on the updates: trim each ΔWᵢ to its top-`density` entries by magnitude, elect a sign per
    entry, and add only the entries that agree with it.

    majority: 'total' elects sign(Σ wᵢΔWᵢ) (mass), 'frequency' the sign most modules have.
    normalize: False gives Σ wᵢ·ΔWᵢ over agreeing entries (density 1 and no conflicts: the exact sum);
    True divides each entry by Σ wᵢ over the modules that kept it (mergekit's default; the TIES paper's
    disjoint mean when the weights are equal).
    """
    return _prepare_ties(states, scaling=scaling, density=density, majority=majority, normalize=normalize)(weights)


def _prepare_dare(states: Sequence[State], *, scaling: float, drop_rate: float = 0.5,
                  seed: int = 0) -> Callable[[Sequence[float]], DenseDelta]:
    p = _check_fraction("drop_rate", drop_rate, low_open=False)
    deltas = [dense(s, scaling) for s in states]
    gen = torch.Generator().manual_seed(int(seed))
    # Weight-independent: the masked ΔWᵢ (mᵢ ⊙ ΔWᵢ), drawn in a fixed order (module, then layer).
    masked = []
    for d in deltas:
        masked.append({})
        for t in sorted(d.layers):
            dw = d.layers[t]
            masked[-1][t] = dw * (torch.rand(dw.shape, generator=gen) >= p).to(dw.device)

    def at(weights: Sequence[float]) -> DenseDelta:
        weights = check_weights(weights, len(states))
        layers = {t: torch.zeros_like(dw) for t, dw in deltas[0].layers.items()}
        for w, m in zip(weights, masked):
            for t, kept in m.items():
                layers[t] += w * kept / (1.0 - p)
        return DenseDelta(layers, _extras(states, weights))

    return at


@register("dare", "delta", "Yu et al. (2024), Language Models are Super Mario (DARE, ICML); peft dare_linear",
          prepare=_prepare_dare)
def dare(states: Sequence[State], weights: Sequence[float], *, scaling: float, drop_rate: float = 0.5,
         seed: int = 0) -> DenseDelta:
    """DARE on the updates: drop each entry of each ΔWᵢ with probability `drop_rate`, rescale the
    survivors by 1/(1 − drop_rate), then add: ΔW = Σ wᵢ·(mᵢ ⊙ ΔWᵢ)/(1 − p).

    Unbiased: E[ΔW] = Σ wᵢΔWᵢ. drop_rate = 0 is the exact sum. The masks come from one generator
    seeded with `seed`, drawn in a fixed order (module, then layer), so a seed gives one result.
    """
    return _prepare_dare(states, scaling=scaling, drop_rate=drop_rate, seed=seed)(weights)
