"""Module arithmetic as pure functions on module states (dicts of tensors). No models here.

A *state* maps parameter names to tensors. Its *kind* says how to read it:

- ``"lora"``: keys ending in ``lora_A.weight`` / ``lora_B.weight`` (ΔW = B·A·α/r), plus optional
  extra tensors such as a classification head;
- ``"ia3"``: keys ending in ``ia3_l`` (a vector l that rescales activations; l = 1 is the identity);
- ``"fft"``: a full fine-tune stored as its task vector τ = θ_ft − θ_pre.

The operators follow Zhang et al. (2023), §3, and the official code (see shared/paper/README.md).

λ and the weights may be any finite numbers: values outside [0, 1] extrapolate (negate at λ = 2
reverses the update twice over, merge at λ = 1.5 moves past θ₁ away from θ₂), which is allowed on
purpose. NaN and ±Inf are refused, as are states that are not one well-formed module (mixed LoRA and
(IA)³ keys, a lora_A without its lora_B, factors whose ranks disagree) and a dict where a list of states
is expected; every error names the key, the layer or the value at fault.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch

State = Mapping[str, torch.Tensor]
KINDS = ("lora", "ia3", "fft")


# ----------------------------------------------------------------------------------------------- checks
def role(key: str) -> str:
    """Which kind of module parameter a key names: 'lora_A', 'lora_B', 'ia3_l' or 'other'."""
    if ".lora_A." in key or key.endswith("lora_A.weight"):
        return "lora_A"
    if ".lora_B." in key or key.endswith("lora_B.weight"):
        return "lora_B"
    if key.endswith("ia3_l") or ".ia3_l." in key:
        return "ia3_l"
    return "other"


def check_kind(state: State, kind: str) -> None:
    """Raise ValueError (TypeError for non-tensors) unless `state` is a non-empty, finite, well-formed
    module state of `kind`: one kind of keys only; for LoRA every lora_A paired with a lora_B of the
    same rank."""
    if kind not in KINDS:
        raise ValueError(f"unknown module kind {kind!r}; expected one of {KINDS}")
    if isinstance(state, str):  # what iterating over a dict of states (or over one state) yields
        raise TypeError(f"a module state is a dict of tensors, got the string {state!r}: was a dict passed "
                        "where a list of states is expected? pass [state] for one module")
    if not isinstance(state, Mapping):
        raise TypeError(f"a module state is a dict of tensors, got {type(state).__name__}")
    if not state:
        raise ValueError("empty module state: it has no parameters")
    roles = {role(k) for k in state}
    if "ia3_l" in roles and roles & {"lora_A", "lora_B"}:
        lora_key = next(k for k in state if role(k) in ("lora_A", "lora_B"))
        ia3_key = next(k for k in state if role(k) == "ia3_l")
        raise ValueError(f"the state mixes LoRA and (IA)³ keys ({lora_key!r} and {ia3_key!r}); "
                         "a module state holds one kind")
    if kind == "lora" and not {"lora_A", "lora_B"} <= roles:
        raise ValueError("kind='lora' but the state has no lora_A/lora_B tensors "
                         f"(it looks like {_guess_kind(roles)!r})")
    if kind == "ia3" and "ia3_l" not in roles:
        raise ValueError(f"kind='ia3' but the state has no ia3_l tensors (it looks like {_guess_kind(roles)!r})")
    if kind == "fft" and roles != {"other"}:
        raise ValueError(f"kind='fft' but the state holds PEM tensors (it looks like {_guess_kind(roles)!r})")
    for k, v in state.items():
        if not torch.is_tensor(v):
            raise TypeError(f"{k}: expected a tensor, got {type(v).__name__}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"{k}: contains NaN or Inf")
    if kind == "lora":
        _check_lora_factors(state)


def _check_lora_factors(state: State) -> None:
    """Every adapted layer has both factors, as matrices A (r, d_in) and B (d_out, r) of one rank r."""
    for layer, (a, b) in lora_pairs(state).items():
        if a.dim() != 2 or b.dim() != 2:
            raise ValueError(f"{layer}: LoRA factors must be matrices, got lora_A {tuple(a.shape)} and "
                             f"lora_B {tuple(b.shape)}")
        if a.shape[0] != b.shape[1]:
            raise ValueError(f"{layer}: rank mismatch inside the module: lora_A has shape {tuple(a.shape)} "
                             f"(rank {a.shape[0]}), lora_B has shape {tuple(b.shape)} (rank {b.shape[1]})")


def _guess_kind(roles: set[str]) -> str:
    if "lora_A" in roles or "lora_B" in roles:
        return "lora"
    if "ia3_l" in roles:
        return "ia3"
    return "fft"


def infer_kind(state: State) -> str:
    """The kind a state's keys imply ('lora', 'ia3' or 'fft')."""
    if not state:
        raise ValueError("empty module state: it has no parameters")
    return _guess_kind({role(k) for k in state})


def check_compatible(states: Sequence[State], kind: str) -> None:
    """Raise unless `states` is a list of states, all of `kind`, sharing keys and shapes."""
    if isinstance(states, Mapping):
        raise TypeError("expected a list of module states, got a dict (one state, or states by name); "
                        "pass [state] for one module, or list(states.values())")
    if len(states) == 0:
        raise ValueError("no modules to compose: the list is empty")
    for i, s in enumerate(states):
        try:
            check_kind(s, kind)
        except (ValueError, TypeError) as e:
            raise type(e)(f"module {i}: {e}") from None
    keys0 = set(states[0])
    for i, s in enumerate(states[1:], start=1):
        if set(s) != keys0:
            missing, extra = sorted(keys0 - set(s)), sorted(set(s) - keys0)
            raise ValueError(f"module {i} has different keys than module 0: "
                             f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
                             f"extra {extra[:3]}{'…' if len(extra) > 3 else ''}")
        for k in keys0:
            if s[k].shape != states[0][k].shape:
                raise ValueError(f"module {i}: {k} has shape {tuple(s[k].shape)}, "
                                 f"module 0 has {tuple(states[0][k].shape)}")


def check_weights(weights: Sequence[float], n: int) -> list[float]:
    if isinstance(weights, Mapping) or not isinstance(weights, Iterable) or isinstance(weights, str):
        raise TypeError(f"weights must be a list of numbers, one per module, got {type(weights).__name__}")
    try:
        weights = [float(w) for w in weights]
    except (TypeError, ValueError) as e:
        raise TypeError(f"weights must be numbers: {e}") from None
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} weights for {n} modules")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite, got {weights}")
    return weights


def _check_lam(lam: float) -> float:
    """λ as a float; any finite value (outside [0, 1] extrapolates), never NaN or ±Inf."""
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise TypeError(f"λ must be a number, got lam={lam!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"λ must be finite, got lam={lam}")
    return value


# ------------------------------------------------------------------------------------------- operators
def add(states: Sequence[State], weights: Sequence[float], kind: str, *, normalize: bool = True) -> dict:
    """Weighted addition θ = Σ wᵢ θᵢ, elementwise on every module parameter (the paper's ⊕, Eq. 2).

    With two modules and weights (λ, 1−λ) this is θ = λθ₁ + (1−λ)θ₂. LoRA: A and B are combined
    separately (not ΔW); (IA)³: the vectors l; full fine-tune: task vectors τ, i.e. θ_pre + Σ wᵢτᵢ.
    Extra tensors (a classification head) are combined the same way, as the paper's
    distribution-generalization merges do (``--merge_head true``).

    normalize: divide the weights by their sum, as the official ``merge.py`` does. For (IA)³ this keeps
    l = 1 the identity (a merge of identity modules stays the identity).
    weights: any finite numbers, negative or above 1 included (extrapolation); NaN/Inf are refused.
    """
    check_compatible(states, kind)
    weights = check_weights(weights, len(states))
    if normalize:
        total = sum(weights)
        if abs(total) < 1e-12:
            raise ValueError(f"weights sum to zero and cannot be normalised: {weights}")
        weights = [w / total for w in weights]
    return {k: sum(w * s[k] for w, s in zip(weights, states)) for k in states[0]}


def merge(theta1: State, theta2: State, lam: float, kind: str) -> dict:
    """θ = λθ₁ + (1−λ)θ₂ (Eq. 2): λ = 1 returns θ₁, λ = 0 returns θ₂; λ outside [0, 1] extrapolates
    along the line through them (allowed; NaN/Inf are refused)."""
    lam = _check_lam(lam)
    return add([theta1, theta2], [lam, 1.0 - lam], kind, normalize=False)


def negate(state: State, kind: str, lam: float = 1.0, *, factor: str = "A") -> dict:
    """The negation ⊖θ, scaled by λ (Eq. 3 and the unlearning code, gpt2_scale.py:119-126).

    - LoRA: negate ONE factor, A ← −λA (or B ← −λB with ``factor="B"``), so ΔW → −λΔW;
    - (IA)³: act on the deviation from the identity, l ← 1 − λ(l − 1) (λ = 1 gives 2 − l);
    - full fine-tune: τ ← −λτ, i.e. θ_pre − λτ.
    Extra tensors (a head) are left unchanged for PEMs. λ > 1 over-reverses, λ < 0 amplifies the
    module instead (allowed: extrapolation); NaN/Inf are refused.
    """
    check_kind(state, kind)
    if factor not in ("A", "B"):
        raise ValueError(f"factor must be 'A' or 'B', got {factor!r}")
    lam = _check_lam(lam)
    out = {}
    for k, v in state.items():
        r = role(k)
        if kind == "lora" and r == f"lora_{factor}":
            out[k] = -lam * v
        elif kind == "ia3" and r == "ia3_l":
            out[k] = 1.0 - lam * (v - 1.0)
        elif kind == "fft":
            out[k] = -lam * v
        else:
            out[k] = v.clone()
    return out


def ablate(state: State, kind: str, lam: float = 1.0) -> dict:
    """The ablation of Table 11: negate EVERY module parameter, θ ← −λθ.

    For LoRA (−λB)(−λA) = λ²BA, so at λ = 1 it changes nothing; for (IA)³ l ← −λl flips and shrinks
    every activation scale, which wrecks the model. Shown in the book as what *not* to do.
    Any finite λ is allowed (outside [0, 1]: extrapolation); NaN/Inf are refused.
    """
    check_kind(state, kind)
    if kind == "fft":
        raise ValueError("the ablation is defined for PEMs (lora, ia3); for fft it equals negate()")
    lam = _check_lam(lam)
    return {k: (-lam * v if role(k) != "other" else v.clone()) for k, v in state.items()}


def analogy(cls_source: State, lm_target: State, lm_source: State, lam: float, kind: str) -> dict:
    """Domain transfer by analogy: θ = λ·θ_cls(source) ⊕ (1−λ)·(θ_LM(target) ⊖ θ_LM(source)).

    Exactly as the official ``analogy.py:147-160``:
    - LoRA: A = λA_cls + (1−λ)A_lmT + (1−λ)A_lmS,  B = λB_cls + (1−λ)B_lmT − (1−λ)B_lmS
      (the negation of θ_LM(source) acts on B only, then the three are added);
    - (IA)³: δ = λδ_cls + (1−λ)(δ_lmT − δ_lmS) with δ = l − 1, returned as l = 1 + δ;
    - full fine-tune: τ = λτ_cls + (1−λ)(τ_lmT − τ_lmS).
    Any finite λ is allowed (outside [0, 1]: extrapolation); NaN/Inf are refused.
    """
    states = [cls_source, lm_target, lm_source]
    check_compatible(states, kind)
    lam = _check_lam(lam)
    mu = 1.0 - lam
    out = {}
    for k in cls_source:
        c, t, s = cls_source[k], lm_target[k], lm_source[k]
        r = role(k)
        if kind == "lora" and r == "lora_A":
            out[k] = lam * c + mu * t + mu * s
        elif kind == "ia3" and r == "ia3_l":
            out[k] = 1.0 + lam * (c - 1.0) + mu * ((t - 1.0) - (s - 1.0))
        else:  # lora_B, fft task vectors, heads
            out[k] = lam * c + mu * t - mu * s
    return out


def identity_like(state: State, kind: str) -> dict:
    """The module that changes nothing: LoRA with B = 0, (IA)³ with l = 1, fft with τ = 0."""
    check_kind(state, kind)
    out = {}
    for k, v in state.items():
        r = role(k)
        if r == "ia3_l":
            out[k] = torch.ones_like(v)
        elif r == "lora_A" or (r == "other" and kind != "fft"):
            out[k] = v.clone()
        else:
            out[k] = torch.zeros_like(v)
    return out


# ------------------------------------------------------------------------------------------- analysis
def lora_pairs(state: State) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{target layer: (A, B)} for every LoRA-adapted layer of a state."""
    a = {k.split(".lora_A")[0]: v for k, v in state.items() if role(k) == "lora_A"}
    b = {k.split(".lora_B")[0]: v for k, v in state.items() if role(k) == "lora_B"}
    if set(a) != set(b):
        raise ValueError(f"unpaired LoRA factors: {sorted(set(a) ^ set(b))[:3]}")
    return {t: (a[t], b[t]) for t in sorted(a)}


def delta_weights(state: State, scaling: float) -> dict[str, torch.Tensor]:
    """ΔW = B·A·scaling per adapted layer (scaling = α/r), the weight update a LoRA module makes."""
    check_kind(state, "lora")
    return {t: (b.float() @ a.float()) * scaling for t, (a, b) in lora_pairs(state).items()}


def relative_error(approx: Mapping[str, torch.Tensor], exact: Mapping[str, torch.Tensor]) -> float:
    """‖approx − exact‖_F / ‖exact‖_F over all layers together."""
    num = sum(float((approx[k] - exact[k]).pow(2).sum()) for k in exact)
    den = sum(float(exact[k].pow(2).sum()) for k in exact)
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def cross_term_error(theta1: State, theta2: State, lam: float, scaling: float = 1.0) -> float:
    """How far the paper's LoRA addition is from adding updates: relative Frobenius error between
    ΔW(λθ₁ + (1−λ)θ₂) and λΔW₁ + (1−λ)ΔW₂. Zero at λ ∈ {0, 1}; the gap is the cross terms
    λ(1−λ)(B₁A₂ + B₂A₁ − B₁A₁ − B₂A₂)."""
    merged = delta_weights(merge(theta1, theta2, lam, "lora"), scaling)
    d1, d2 = delta_weights(theta1, scaling), delta_weights(theta2, scaling)
    exact = {k: lam * d1[k] + (1 - lam) * d2[k] for k in d1}
    return relative_error(merged, exact)


def max_abs_diff(s1: State, s2: State) -> float:
    """Largest elementwise difference between two states with the same keys."""
    if set(s1) != set(s2):
        raise ValueError("states have different keys")
    return max(float((s1[k].float() - s2[k].float()).abs().max()) for k in s1)


def norms(state: State, keys: Iterable[str] | None = None) -> float:
    """Frobenius norm of a whole state (or of the given keys)."""
    keys = list(state) if keys is None else list(keys)
    return math.sqrt(sum(float(state[k].float().pow(2).sum()) for k in keys))


# --------------------------------------------------------------------- negating a continued training
CONTINUED_VARIANTS = ("delta", "official")  # the stated operator; the official code's (peft_merge.py)


def toxic_update(alpaca: State, toxic: State) -> dict[str, torch.Tensor]:
    """Δ = θ_tox − θ_alp factor-wise: what a continued training (θ_tox, started from θ_alp) changed in
    every LoRA A and B (the paper's appendix E)."""
    check_compatible([alpaca, toxic], "lora")
    return {k: toxic[k] - alpaca[k] for k in alpaca}


def negate_continued(alpaca: State, toxic: State, lam: float, variant: str = "delta") -> dict[str, torch.Tensor]:
    """The detoxified module from a LoRA θ_alp and its continued-training toxic version θ_tox.

    - ``"delta"`` (the stated operator): θ = θ_alp − λΔ with Δ = θ_tox − θ_alp, on A and B alike:
      A = A_alp − λ(A_tox − A_alp), B = B_alp − λ(B_tox − B_alp).
    - ``"official"`` (``peft_merge.py:204-271``): A = A_alp + λ(A_alp − A_tox), B = B_alp + λ(B_alp + B_tox),
      i.e. θ_alp + λ(θ_alp + ⊖θ_tox) with the LoRA negation ⊖ acting on A only. Its A equals the stated
      operator's; its B does not (+B_tox instead of −B_tox).
    λ = 0 returns θ_alp for both.
    """
    if variant not in CONTINUED_VARIANTS:
        raise ValueError(f"variant must be one of {CONTINUED_VARIANTS}, got {variant!r}")
    check_compatible([alpaca, toxic], "lora")
    lam = _check_lam(lam)
    out = {}
    for k, a in alpaca.items():
        t = toxic[k]
        if variant == "official" and role(k) == "lora_B":
            out[k] = a + lam * (a + t)
        else:
            out[k] = a - lam * (t - a)
    return out
