"""The few pieces the chapters' exercises need beyond the chapters' own functions: each answers one
exercise's question from what its chapter already computed (cached modules, sampled texts), so the
worked answers are cheap and computed, never typed.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import arithmetic
from .evaluate import ToxicityScorer

State = Mapping[str, torch.Tensor]


# ------------------------------------------------------------------------------------ chapter 00 / 06
def fresh_factor(state: State, factor: str = "A", seed: int = 1) -> dict[str, torch.Tensor]:
    """`state` with every LoRA `factor` replaced by an independent random matrix of the same shape and
    the same per-layer standard deviation: what the module's factor would look like had it started
    from another initialisation (the other factor, and the head, are kept)."""
    arithmetic.check_kind(state, "lora")
    if factor not in ("A", "B"):
        raise ValueError(f"factor must be 'A' or 'B', got {factor!r}")
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if arithmetic.role(k) == f"lora_{factor}":
            noise = torch.randn(v.shape, generator=gen, dtype=torch.float32)
            noise = (noise - noise.mean()) / noise.std()
            out[k] = (noise * v.float().std() + v.float().mean()).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def uniform_merge(states: Sequence[State], kind: str) -> dict[str, torch.Tensor]:
    """Σ θᵢ / n: the paper's addition of n modules with equal weights."""
    return arithmetic.add(list(states), [1.0] * len(states), kind)


# ------------------------------------------------------------------------------------------ chapter 03
def fit_text_scorer(toxic: Sequence[str], clean: Sequence[str], *, seed: int = 0) -> ToxicityScorer:
    """A second toxicity scorer, independent of the chapter's: a TF-IDF + logistic-regression classifier
    fitted on known toxic texts against known clean ones; its score is P(toxic)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    toxic, clean = [t for t in toxic if t.strip()], [t for t in clean if t.strip()]
    if not toxic or not clean:
        raise ValueError(f"need toxic and clean texts to fit a scorer, got {len(toxic)} and {len(clean)}")
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
                          LogisticRegression(max_iter=1000, class_weight="balanced", random_state=seed))
    model.fit(list(toxic) + list(clean), [1] * len(toxic) + [0] * len(clean))
    return ToxicityScorer("tf-idf logistic regression", lambda texts: model.predict_proba(list(texts))[:, 1],
                          f"fitted here on {len(toxic)} toxic and {len(clean)} clean texts")


def rescore(rows: Sequence[Mapping[str, Any]], scorer: ToxicityScorer, label: str = "model") -> pd.DataFrame:
    """Each measurement's samples scored again by `scorer`, beside the chapter's own mean toxicity:
    columns [label, chapter's scorer, new scorer]."""
    from .unlearning import toxicity_summary

    out = []
    for r in rows:
        if not r.get("samples"):
            raise ValueError(f"row {r.get(label)!r} has no samples to rescore")
        new = toxicity_summary([float(s) for s in scorer(r["samples"])])
        out.append({label: r[label], f"toxicity ({r['scorer']})": r["toxicity"],
                    f"toxicity ({scorer.name})": new["toxicity"]})
    return pd.DataFrame(out).set_index(label)


def same_ranking(table: pd.DataFrame) -> float:
    """Spearman rank correlation between the first two columns (do two scorers order models alike?)."""
    if len(table) < 2:
        raise ValueError("need at least two rows to compare rankings")
    a, b = table.iloc[:, 0].rank().to_numpy(), table.iloc[:, 1].rank().to_numpy()
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# ------------------------------------------------------------------------------------------ chapter 05
def one_factor(alpaca: State, toxic: State, lam: float, factor: str) -> dict[str, torch.Tensor]:
    """θ_alp − λΔ applied to ONE LoRA factor (``"A"`` or ``"B"``), the other left at θ_alp."""
    arithmetic.check_compatible([alpaca, toxic], "lora")
    if factor not in ("A", "B"):
        raise ValueError(f"factor must be 'A' or 'B', got {factor!r}")
    return {k: (a - lam * (toxic[k] - a) if arithmetic.role(k) == f"lora_{factor}" else a.clone())
            for k, a in alpaca.items()}


def one_factor_gap(alpaca: State, toxic: State, lams: Sequence[float], scaling: float) -> pd.DataFrame:
    """Relative ΔW error against the weight-space target ΔW_alp − λ(ΔW_tox − ΔW_alp) when the toxic
    update is negated on A only, on B only, or on both (the stated operator), per λ."""
    from .arithmetic import negate_continued
    from .instruct import target_delta_w

    rows = []
    for lam in lams:
        target = target_delta_w(alpaca, toxic, lam, scaling)
        for name, state in (("A only", one_factor(alpaca, toxic, lam, "A")),
                            ("B only", one_factor(alpaca, toxic, lam, "B")),
                            ("A and B (stated)", negate_continued(alpaca, toxic, lam))):
            error = arithmetic.relative_error(arithmetic.delta_weights(state, scaling), target)
            rows.append({"lam": float(lam), "negated": name, "relative ΔW error": error})
    return pd.DataFrame(rows).pivot(index="lam", columns="negated", values="relative ΔW error")
