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
knots       LoRA, rank Σrᵢ  SVD of [ΔW₁ … ΔWₙ] = UΣ[V₁ … Vₙ]ᵀ; TIES on the coordinates ΣVᵢᵀ (Stoica et al. 2025)
tsv_m       LoRA, rank Σkᵢ  each ΔWᵢ's top-kᵢ singular vectors, decorrelated by Procrustes, summed (Gargiulo et al. 2025)
iso_c       LoRA, rank Σrᵢ  Σ wᵢΔWᵢ with its singular values replaced by their mean (Marczak et al. 2025)
==========  ==============  ===========================================================================

Each method is registered with :func:`register`: its display name, what it returns, its source, and
the keyword parameters it takes (:class:`Param`: default, and which chapter setting feeds it), so a
chapter derives its name lists, keyword arguments and cache keys from :data:`METHODS`: adding a method
is one registered function plus its test.

States are ``dict[str, Tensor]`` in pemnb's canonical LoRA layout (``<layer>.lora_A.weight`` of shape
(r, d_in), ``<layer>.lora_B.weight`` of shape (d_out, r)). Methods that return LoRA factors keep the
inputs' scaling s (write them into a model whose α/r equals s; for ``cat`` at rank Σrᵢ that means
α = s·Σrᵢ). Methods that return a dense update say so with their type, :class:`DenseDelta`, whose ΔW
already includes s. Extra tensors of a state (a classification head) are combined as Σ wᵢ·hᵢ by every
method. To evaluate a DenseDelta on a live model use :func:`pemnb.sweep.delta_applied` (adds ΔW to the
base weights and restores them) or :func:`factorise` it back into LoRA factors.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

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


REQUIRED = inspect.Parameter.empty  # a Param without a default: the caller must give it


@dataclass(frozen=True)
class Param:
    """A keyword parameter of a registered method.

    default: its value when not given (REQUIRED: none). setting: the chapter-settings field that feeds it
    (e.g. ``"ties_density"``), or :data:`ADAPTER` for the LoRA scaling α/r, which comes from the live
    adapter; None: a chapter leaves it at its default.
    """

    name: str
    default: Any = REQUIRED
    setting: str | None = None
    doc: str = ""


ADAPTER = "the live adapter's α/r"  # Param.setting of a value read off the adapter, not the settings
SCALING = Param("scaling", setting=ADAPTER, doc="LoRA scaling α/r of the inputs (ΔW = s·B·A)")


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
    display: str = ""                 # the name a page shows
    update: str = ""                  # one line: the ΔW it gives and the rank of its result
    params: tuple[Param, ...] = ()    # its keyword parameters
    same_update_as: str | None = None  # another method whose ΔW this one's equals exactly (tested)

    def kwargs(self, settings: Any = None, scaling: float | None = None) -> dict[str, Any]:
        """The keyword arguments to call it with: each parameter fed by a setting reads that field of
        `settings` (without settings: its default), the scaling comes from `scaling`; the rest keep
        their defaults."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.setting == ADAPTER:
                if scaling is None:
                    raise ValueError(f"method {self.name!r} needs the LoRA scaling α/r (scaling=)")
                out[p.name] = float(scaling)
            elif p.setting is not None and settings is None and p.default is not REQUIRED:
                continue
            elif p.setting is not None:
                if settings is None or not hasattr(settings, p.setting):
                    raise ValueError(f"method {self.name!r} reads its {p.name!r} from the setting "
                                     f"{p.setting!r}, which these settings do not have")
                out[p.name] = getattr(settings, p.setting)
        return out


METHODS: dict[str, Method] = {}


def register(name: str, returns: str, reference: str, prepare: Callable | None = None, *, display: str = "",
             update: str = "", params: Sequence[Param] = (), same_update_as: str | None = None):
    """Decorator: add a composition function to :data:`METHODS` under `name`, with its `prepare` hook
    (a function of the states and keyword arguments returning the function of the weights), the name a
    page shows (`display`), a one-line description of its update and rank (`update`), and its keyword
    parameters (`params`, which must be exactly the function's keyword-only arguments)."""
    if returns not in ("lora", "delta"):
        raise ValueError(f"returns must be 'lora' or 'delta', got {returns!r}")
    params = tuple(params)

    def deco(fn):
        if name in METHODS:
            raise ValueError(f"a method named {name!r} is already registered")
        sig = inspect.signature(fn).parameters
        keyword = {k: v for k, v in sig.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
        declared = {p.name: p for p in params}
        if set(keyword) != set(declared):
            raise ValueError(f"method {name!r} declares parameters {sorted(declared)} but takes {sorted(keyword)}")
        for p in params:
            if keyword[p.name].default != p.default:
                raise ValueError(f"method {name!r}: parameter {p.name!r} declares default {p.default!r}, "
                                 f"the function has {keyword[p.name].default!r}")
        METHODS[name] = Method(name, fn, returns, reference, prepare, display or name, update, params,
                               same_update_as)
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
@register("paper", "lora", "Zhang et al. (2023), Eq. 2; pemnb.arithmetic.add", display="paper (A, B added)",
          update="LoRA, rank r: s·(Σ wᵢBᵢ)(Σ wᵢAᵢ) — cross terms BᵢAⱼ")
def paper(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The paper's addition: A = Σ wᵢAᵢ and B = Σ wᵢBᵢ separately (Zhang et al. 2023, Eq. 2).

    ΔW = s·(Σ wᵢBᵢ)(Σ wᵢAᵢ) = s·Σ wᵢ²BᵢAᵢ + s·Σ_{i≠j} wᵢwⱼBᵢAⱼ: the cross terms BᵢAⱼ are not in
    Σ wᵢΔWᵢ. Weights are used as given (no normalisation), as :func:`pemnb.arithmetic.merge` does.
    """
    return add(states, weights, "lora", normalize=False)


@register("linear", "lora", "peft LoraModel.add_weighted_adapter(combination_type='linear')", display="peft linear",
          update="LoRA, rank r: s·(Σ √|wᵢ|Bᵢ)(Σ sign(wᵢ)√|wᵢ|Aᵢ) — other cross terms")
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


@register("cat", "lora", "peft LoraModel.add_weighted_adapter(combination_type='cat')", display="cat (rank 2r)",
          update="LoRA, rank Σrᵢ: s·Σ wᵢBᵢAᵢ exactly; the rank grows", same_update_as="task_arith")
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
          prepare=_prepare_task_arith, display="task arithmetic (ΔW)",
          update="dense ΔW: s·Σ wᵢBᵢAᵢ exactly", params=(SCALING,))
def task_arith(states: Sequence[State], weights: Sequence[float], *, scaling: float) -> DenseDelta:
    """Exact addition of the updates, as dense matrices: ΔW = Σ wᵢ·s·BᵢAᵢ per layer."""
    return _prepare_task_arith(states, scaling=scaling)(weights)


def _prepare_svd(states: Sequence[State], *, scaling: float,
                 rank: int | None = None) -> Callable[[Sequence[float]], dict[str, torch.Tensor]]:
    exact = _prepare_task_arith(states, scaling=scaling)
    rank = rank_of(states[0]) if rank is None else int(rank)
    return lambda weights: factorise(exact(weights), rank, scaling)  # the SVD depends on the weights


@register("svd", "lora", "peft LoraModel.add_weighted_adapter(combination_type='svd'); Eckart–Young",
          prepare=_prepare_svd, display="SVD (rank r)",
          update="LoRA, rank k (default r): the best rank-k approximation of s·Σ wᵢBᵢAᵢ",
          params=(SCALING, Param("rank", None, doc="rank of the result (None: the inputs' r)")))
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
        layers = {t: _elect_and_merge(stacked, w, majority, normalize).to(dtypes[t]) for t, stacked in trimmed.items()}
        return DenseDelta(layers, _extras(states, weights))

    return at


def _elect_and_merge(stacked: torch.Tensor, w: torch.Tensor, majority: str, normalize: bool) -> torch.Tensor:
    """TIES' elect and disjoint-merge steps on trimmed tensors `stacked` (module × …), weights `w`
    (module × 1 × 1): Σ wᵢxᵢ over the entries whose sign agrees with the elected one (divided by Σ wᵢ over
    them when `normalize`)."""
    # The sign vote depends on the weights (their sizes for 'total', their signs for 'frequency').
    weighted = stacked * w
    elect = weighted.sum(0) if majority == "total" else weighted.sign().sum(0)
    # (a trimmed-away or zero-weighted entry has sign 0, which is never the elected ±1)
    keep = weighted.sign() == torch.where(elect >= 0, 1.0, -1.0)
    merged = (weighted * keep).sum(0)
    if normalize:
        divisor = (w * keep).sum(0)
        merged = merged / torch.where(divisor.abs() < 1e-12, torch.ones_like(divisor), divisor)
    return merged


@register("ties", "delta", "Yadav et al. (2023), TIES-Merging (NeurIPS); mergekit generalized_task_arithmetic",
          prepare=_prepare_ties, display="TIES",
          update="dense ΔW: trim each ΔWᵢ to its largest entries, elect a sign, add the agreeing ones",
          params=(SCALING, Param("density", 0.2, setting="ties_density", doc="share of each ΔWᵢ's entries kept"),
                  Param("majority", "total", doc="sign election: 'total' (mass) or 'frequency'"),
                  Param("normalize", False, doc="divide by Σ wᵢ over the modules that kept an entry")))
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
          prepare=_prepare_dare, display="DARE",
          update="dense ΔW: drop entries of each ΔWᵢ at random (prob. p), rescale by 1/(1−p), add",
          params=(SCALING, Param("drop_rate", 0.5, setting="dare_drop_rate", doc="probability p of dropping an entry"),
                  Param("seed", 0, setting="dare_seed", doc="seed of the drop masks")))
def dare(states: Sequence[State], weights: Sequence[float], *, scaling: float, drop_rate: float = 0.5,
         seed: int = 0) -> DenseDelta:
    """DARE on the updates: drop each entry of each ΔWᵢ with probability `drop_rate`, rescale the
    survivors by 1/(1 − drop_rate), then add: ΔW = Σ wᵢ·(mᵢ ⊙ ΔWᵢ)/(1 − p).

    Unbiased: E[ΔW] = Σ wᵢΔWᵢ. drop_rate = 0 is the exact sum. The masks come from one generator
    seeded with `seed`, drawn in a fixed order (module, then layer), so a seed gives one result.
    """
    return _prepare_dare(states, scaling=scaling, drop_rate=drop_rate, seed=seed)(weights)


# ------------------------------------------------------------- LoRA-native merges in a shared subspace
# KnOTS, TSV-M and Iso-C work on the SVD of the updates. Every ΔWᵢ = s·BᵢAᵢ shares the scaling s, and
# each method is homogeneous of degree one in the updates, so they run on the products BᵢAᵢ and return
# factors at the inputs' s. The SVDs come from the factors (QR of each side, SVD of the small core), never
# from a dense d_out × d_in matrix, and in float64.
def svd_of_product(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thin SVD (U, S, Vᴴ) of the product ``b @ a`` (b: m×R, a: R×n), computed from the factors:
    b = Q_b R_b and aᵀ = Q_a R_a, so b·a = Q_b (R_b R_aᵀ) Q_aᵀ and the SVD of the small core R_b R_aᵀ gives
    it. min(m, n, R) components, in float64."""
    if b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0]:
        raise ValueError(f"need b (m×R) and a (R×n), got shapes {tuple(b.shape)} and {tuple(a.shape)}")
    qb, rb = torch.linalg.qr(b.double())
    qa, ra = torch.linalg.qr(a.double().T)
    u, sv, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)
    return qb @ u, sv, vh @ qa.T


def _support(sv: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Which singular values of ``b @ a`` are not zero up to float64 rounding: above
    max(shape)·eps·‖b‖·‖a‖, the size of the rounding in a product of these factors (relative to the
    factors, not to the largest singular value, so a product that cancels to rounding is all zero)."""
    scale = float(torch.linalg.norm(b)) * float(torch.linalg.norm(a))
    return sv > max(b.shape[0], a.shape[1]) * torch.finfo(torch.float64).eps * scale


def polar_factor(m: torch.Tensor) -> torch.Tensor:
    """The matrix with orthonormal columns closest to `m` in Frobenius norm (orthogonal Procrustes):
    P·Qᴴ from the SVD m = P·S·Qᴴ. A matrix whose columns are already orthonormal is its own factor."""
    p, _, qh = torch.linalg.svd(m.double(), full_matrices=False)
    return p @ qh


def _pairs64(states: Sequence[State]) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    return [{t: (a.double(), b.double()) for t, (a, b) in lora_pairs(s).items()} for s in states]


def _lora_state(states: Sequence[State], weights: Sequence[float], layers: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                rank: int) -> dict[str, torch.Tensor]:
    """A LoRA state of rank `rank` from {layer: (B, A)} (zero columns of B and rows of A pad a layer up to
    `rank`, which leaves B·A unchanged), in the inputs' dtypes and key order; extras Σ wᵢhᵢ."""
    pairs = lora_pairs(states[0])
    out: dict[str, torch.Tensor] = {}
    extras = _extras(states, weights)
    for k in states[0]:
        r = role(k)
        if r == "other":
            out[k] = extras[k]
            continue
        t = k[: k.rindex(".lora_")]
        b, a = layers[t]
        k_have = a.shape[0]
        if k_have > rank:
            raise ValueError(f"{t}: {k_have} components do not fit rank {rank}")
        if r == "lora_A":
            out[k] = torch.cat([a, a.new_zeros(rank - k_have, a.shape[1])]).to(pairs[t][0].dtype)
        else:
            out[k] = torch.cat([b, b.new_zeros(b.shape[0], rank - k_have)], dim=1).to(pairs[t][1].dtype)
    return out


def _prepare_knots(states: Sequence[State], *, merge: str = "ties", density: float = 0.2,
                   majority: str = "total") -> Callable[[Sequence[float]], dict[str, torch.Tensor]]:
    if merge not in ("ties", "average"):
        raise ValueError(f"merge must be 'ties' or 'average', got {merge!r}")
    density = _check_fraction("density", density, low_open=True)
    if majority not in ("total", "frequency"):
        raise ValueError(f"majority must be 'total' or 'frequency', got {majority!r}")
    check_compatible(states, "lora")
    rank = sum(rank_of(s) for s in states)
    aligned = {}
    for t, _ in lora_pairs(states[0]).items():
        factors = [p[t] for p in _pairs64(states)]
        d_in = factors[0][0].shape[1]
        # [ΔW₁ … ΔWₙ] = [B₁ … Bₙ]·blockdiag(A₁ … Aₙ) = U Σ [V₁ᵀ … Vₙᵀ]: U is the shared basis and ΣVᵢᵀ
        # module i's coordinates in it (ΔWᵢ = U·ΣVᵢᵀ exactly). Weight-independent: done once per sweep.
        u, sv, vh = svd_of_product(torch.cat([b for _, b in factors], dim=1), torch.block_diag(*[a for a, _ in factors]))
        coords = torch.stack((sv[:, None] * vh).split(d_in, dim=1))  # module × component × d_in
        if merge == "ties":
            coords = torch.stack([_trim(c, density) for c in coords])
        aligned[t] = (u, coords)

    def at(weights: Sequence[float]) -> dict[str, torch.Tensor]:
        weights = check_weights(weights, len(states))
        w = torch.tensor(weights, dtype=torch.float64).view(-1, 1, 1)
        layers = {t: (u, (coords * w).sum(0) if merge == "average" else _elect_and_merge(coords, w, majority, False))
                  for t, (u, coords) in aligned.items()}
        return _lora_state(states, weights, layers, rank)

    return at


@register("knots", "lora", "Stoica et al. (2025), Model merging with SVD to tie the KnOTS (ICLR)",
          prepare=_prepare_knots, display="KnOTS-TIES (rank 2r)",
          update="LoRA, rank Σrᵢ: SVD of [ΔW₁ … ΔWₙ] = UΣ[V₁ … Vₙ]ᵀ, TIES (or a weighted average) on the ΣVᵢᵀ",
          params=(Param("merge", "ties", doc="how the aligned coordinates are merged: 'ties' or 'average'"),
                  Param("density", 0.2, setting="ties_density", doc="TIES: share of each module's coordinates kept"),
                  Param("majority", "total", doc="TIES: sign election by 'total' mass or 'frequency'")))
def knots(states: Sequence[State], weights: Sequence[float], *, merge: str = "ties", density: float = 0.2,
          majority: str = "total") -> dict[str, torch.Tensor]:
    """KnOTS (Stoica, Ramesh, Ecsedi, Choshen & Hoffman, ICLR 2025, "Model merging with SVD to tie the
    KnOTS", arXiv:2410.19735): align the LoRA updates in one basis, then merge their coordinates there.

    Per layer, the SVD of the updates side by side, [ΔW₁ … ΔWₙ] = UΣ[V₁ᵀ … Vₙᵀ], gives a basis U shared by
    all modules and each module's coordinates Cᵢ = ΣVᵢᵀ in it (ΔWᵢ = U·Cᵢ). The coordinates are merged —
    by TIES (trim each Cᵢ to its top `density` entries, elect a sign, add the agreeing ones: the paper's
    KnOTS-TIES) or by the weighted average Σ wᵢCᵢ (``merge="average"``, which gives Σ wᵢΔWᵢ exactly) —
    and the result is the LoRA module B = U, A = merged C, of rank Σrᵢ (a rank-grown adapter, or a dense
    ΔW on the live one). TIES here runs per layer, like :func:`ties`, with the weights applied before
    the election and no normalisation. The paper merges rank-16 LoRA fine-tunes of ViT and Llama 3 8B models.
    """
    return _prepare_knots(states, merge=merge, density=density, majority=majority)(weights)


def _prepare_tsv_m(states: Sequence[State], *, task_rank: int | None = None
                   ) -> Callable[[Sequence[float]], dict[str, torch.Tensor]]:
    check_compatible(states, "lora")
    n = len(states)
    ranks = [rank_of(s) for s in states]
    decorrelated, rank = {}, 0
    for t, _ in lora_pairs(states[0]).items():
        factors = [p[t] for p in _pairs64(states)]
        d_in, d_out = factors[0][0].shape[1], factors[0][1].shape[0]
        share = min(d_out, d_in) // n  # the paper: each of n tasks keeps 1/n of a layer's singular vectors
        if share < 1:
            raise ValueError(f"{t}: {n} modules leave no singular vector each in a {d_out}×{d_in} layer")
        us, svs, vs = [], [], []
        for (a, b), r in zip(factors, ranks):
            keep = min(r, share) if task_rank is None else int(task_rank)
            if not 1 <= keep <= min(r, share):
                raise ValueError(f"task_rank must be in [1, {min(r, share)}] for rank-{r} modules in a "
                                 f"{d_out}×{d_in} layer shared by {n}, got {task_rank}")
            u, sv, vh = svd_of_product(b, a)
            us.append(u[:, :keep])
            svs.append(sv[:keep])
            vs.append(vh[:keep])
        # Decorrelate: the nearest matrices with orthonormal columns to [U₁ … Uₙ] and [V₁ … Vₙ]
        # (weight-independent, so once per sweep; the weights only scale each module's Σᵢ).
        decorrelated[t] = (polar_factor(torch.cat(us, dim=1)), svs, polar_factor(torch.cat(vs, dim=0).T))
        rank = max(rank, sum(len(x) for x in svs))

    def at(weights: Sequence[float]) -> dict[str, torch.Tensor]:
        weights = check_weights(weights, len(states))
        layers = {}
        for t, (u, svs, v) in decorrelated.items():
            sigma = torch.cat([w * sv for w, sv in zip(weights, svs)])
            root = sigma.abs().sqrt()
            layers[t] = (u * (torch.sign(sigma) * root)[None, :], root[:, None] * v.T)
        return _lora_state(states, weights, layers, rank)

    return at


@register("tsv_m", "lora", "Gargiulo et al. (2025), Task Singular Vectors: reducing task interference in model "
          "merging (CVPR)", prepare=_prepare_tsv_m, display="TSV-M (rank 2r)",
          update="LoRA, rank Σkᵢ: each ΔWᵢ's top-kᵢ singular vectors, decorrelated (Procrustes), Σ wᵢΣᵢ kept",
          params=(Param("task_rank", None, doc="singular vectors kept per module (None: its rank r, at most "
                                               "1/n of the layer's, as the paper)"),))
def tsv_m(states: Sequence[State], weights: Sequence[float], *, task_rank: int | None = None) -> dict[str, torch.Tensor]:
    """TSV-M (Gargiulo, Crisostomi, Bucarelli, Scardapane, Silvestri & Rodolà, CVPR 2025, "Task Singular
    Vectors: Reducing Task Interference in Model Merging", arXiv:2412.00081), on LoRA updates.

    Per layer: the SVD of each update ΔWᵢ = UᵢΣᵢVᵢᵀ, truncated to its top kᵢ singular vectors (the paper
    keeps 1/n of a layer's; a LoRA update of rank r has only r, so by default kᵢ = min(r, 1/n of the
    layer), i.e. all of them); the kept vectors side by side, U = [U₁ … Uₙ] and V = [V₁ … Vₙ], are
    decorrelated by replacing each with its nearest matrix with orthonormal columns (orthogonal
    Procrustes, :func:`polar_factor`); the merge is U⊥ · blockdiag(wᵢΣᵢ) · V⊥ᵀ, returned as LoRA factors of
    rank Σkᵢ. The weights wᵢ scale each module's singular values (the paper uses one global α). With one
    module the result is its best rank-k₁ approximation.
    """
    return _prepare_tsv_m(states, task_rank=task_rank)(weights)


@register("iso_c", "lora", "Marczak et al. (2025), No task left behind: isotropic model merging with common "
          "and task-specific subspaces (ICML)", display="Iso-C (rank 2r)",
          update="LoRA, rank Σrᵢ: Σ wᵢΔWᵢ with its singular values all set to their mean (a flat spectrum)")
def iso_c(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Iso-C (Marczak, Magistri, Cygert, Twardowski, Bagdanov & van de Weijer, ICML 2025, "No Task Left
    Behind: Isotropic Model Merging with Common and Task-Specific Subspaces", arXiv:2502.04959), on LoRA
    updates.

    Per layer, the weighted sum Σ wᵢΔWᵢ = UΣVᵀ (computed from the rank-concatenated factors, as
    :func:`cat`) keeps its singular vectors, and its singular values are replaced by their mean σ̄: the
    merge is σ̄·U·Vᵀ, whose spectrum is flat (every direction of the common subspace scaled alike) and
    whose trace norm equals the sum's. For a full fine-tune the mean runs over all of a layer's singular
    values; a sum of LoRA updates has at most Σrᵢ non-zero ones, and the mean runs over those (the zero
    ones carry no direction). Returned as LoRA factors of rank Σrᵢ.
    """
    weights = _prepare(states, weights)
    rank = sum(rank_of(s) for s in states)
    layers = {}
    for t, _ in lora_pairs(states[0]).items():
        factors = [p[t] for p in _pairs64(states)]
        b = torch.cat([b for _, b in factors], dim=1)
        a = torch.cat([w * a for w, (a, _) in zip(weights, factors)], dim=0)
        u, sv, vh = svd_of_product(b, a)  # Σ wᵢBᵢAᵢ = [B₁ … Bₙ]·[w₁A₁; …; wₙAₙ]
        keep = _support(sv, b, a)
        mean = sv[keep].mean() if bool(keep.any()) else sv.new_zeros(())
        root = mean.sqrt() * keep
        layers[t] = (u * root[None, :], root[:, None] * vh)
    return _lora_state(states, weights, layers, rank)


# ------------------------------------------------------------------------------------------- registry
def _shown_default(p: Param) -> str:
    return "required" if p.default is REQUIRED else repr(p.default)


def registry_rows() -> list[dict[str, str]]:
    """One row per registered method, for a page: its name, what it returns (the update and the rank),
    its parameters (default, and which setting feeds it) and its source."""
    rows = []
    for m in METHODS.values():
        params = "; ".join(f"{p.name} ← {p.setting}" + ("" if p.default is REQUIRED else f" (default {p.default!r})")
                           if p.setting else f"{p.name} = {_shown_default(p)}"
                           for p in m.params)
        rows.append({"method": m.name, "shown as": m.display, "result and ΔW": m.update,
                     "parameters (← chapter setting)": params or "none",
                     "source": m.reference})
    return rows
