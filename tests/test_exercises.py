"""pemnb.exercises: the pieces the chapters' exercises use, checked exactly on toy modules."""
import math

import pytest
import torch

from pemnb import arithmetic as A
from pemnb import exercises as E
from pemnb.evaluate import ToxicityScorer


def lora(seed, a=None, b=None):
    g = torch.Generator().manual_seed(seed)
    return {"l.lora_A.weight": torch.randn(2, 6, generator=g) if a is None else a.clone(),
            "l.lora_B.weight": torch.randn(5, 2, generator=g) if b is None else b.clone(),
            "head.weight": torch.randn(2, 3, generator=g)}


def test_fresh_factor_replaces_one_factor_and_makes_cross_terms():
    t1 = lora(0)
    t2 = lora(1, a=t1["l.lora_A.weight"])  # shared A: the merge adds the updates exactly
    assert A.cross_term_error(t1, t2, 0.5) < 1e-6
    other = E.fresh_factor(t2, "A", seed=3)
    assert not torch.equal(other["l.lora_A.weight"], t2["l.lora_A.weight"])
    assert torch.equal(other["l.lora_B.weight"], t2["l.lora_B.weight"]) and torch.equal(other["head.weight"], t2["head.weight"])
    assert math.isclose(float(other["l.lora_A.weight"].std()), float(t2["l.lora_A.weight"].std()), rel_tol=1e-5)
    assert A.cross_term_error(t1, other, 0.5) > 0.1
    with pytest.raises(ValueError, match="factor must be 'A' or 'B'"):
        E.fresh_factor(t1, "C")


def test_uniform_merge_is_the_mean():
    ts = [lora(i) for i in range(3)]
    m = E.uniform_merge(ts, "lora")
    assert all(torch.allclose(m[k], sum(t[k] for t in ts) / 3) for k in m)


def test_a_fitted_scorer_separates_its_classes_and_rescoring_keeps_rows():
    toxic = ["you are a stupid idiot", "shut up you moron", "what an idiot, stupid and dumb"]
    clean = ["the river flows north to the sea", "the album was released in 1994", "rain fell on the town"]
    s = E.fit_text_scorer(toxic, clean)
    assert min(s(toxic)) > max(s(clean))
    rows = [{"model": "toxic", "scorer": "x", "toxicity": 0.9, "samples": ["stupid idiot moron"]},
            {"model": "base", "scorer": "x", "toxicity": 0.1, "samples": ["the river and the sea"]}]
    table = E.rescore(rows, s)
    assert list(table.columns) == ["toxicity (x)", "toxicity (tf-idf logistic regression)"]
    assert table.loc["toxic"].iloc[1] > table.loc["base"].iloc[1]
    assert E.same_ranking(table) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no samples"):
        E.rescore([{"model": "m", "scorer": "x", "toxicity": 0.0, "samples": []}], s)
    with pytest.raises(ValueError, match="need toxic and clean"):
        E.fit_text_scorer([], clean)


def test_one_factor_negation_is_exact_when_only_that_factor_moved():
    alp = lora(0)
    tox_a = lora(1, b=alp["l.lora_B.weight"])          # continued training moved A only
    gap = E.one_factor_gap(alp, {**tox_a, "head.weight": alp["head.weight"]}, [0.5, 1.0], 2.0)
    assert list(gap.columns) == ["A and B (stated)", "A only", "B only"]
    assert (gap["A only"] < 1e-6).all() and (gap["A and B (stated)"] < 1e-6).all() and (gap["B only"] > 0.01).all()
    one = E.one_factor(alp, tox_a, 0.5, "B")
    assert torch.equal(one["l.lora_A.weight"], alp["l.lora_A.weight"])
