"""Chapter 06 (merge methods) and the sweep engine's fast path: exact identities on hand-made modules."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pemnb import arithmetic as A
from pemnb import merge_chapter as MC
from pemnb import merge_methods as M
from pemnb.backbones import load_backbone
from pemnb.modules import attach, read_state, write_state
from pemnb.profiles import load_profile
from pemnb.sweep import StateWriter, pair

SETTINGS = MC.settings(load_profile("smoke"), ties_density=0.5, dare_drop_rate=0.5, dare_seed=0, cost_repeat=1,
                       lam_grid=(0.0, 0.5, 1.0), tolerance=0.01)


def lora_state(seed, d_in=6, d_out=5, r=2, shared_a=None):
    g = torch.Generator().manual_seed(seed)
    s = {}
    for i in range(2):
        s[f"l{i}.q.lora_A.weight"] = shared_a[i] if shared_a else torch.randn(r, d_in, generator=g)
        s[f"l{i}.q.lora_B.weight"] = torch.randn(d_out, r, generator=g)
    s["head.weight"] = torch.randn(2, d_in, generator=g)
    return s


def model_with(kind="lora", r=2):
    model, _ = load_backbone("smoke-bert", "classification", 2, seed=0, device="cpu")
    return attach(model, kind, r=r, alpha=2 * r, init_seed=0)


def random_like(model, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in read_state(model).items()}


# ------------------------------------------------------------------------------------ sweep engine
@pytest.mark.parametrize("kind", ["lora", "ia3", "fft"])
def test_state_writer_puts_the_state_into_the_same_parameters(kind):
    model = model_with(kind)
    params_before = {n: id(p) for n, p in model.named_parameters()}
    state = random_like(model, 1)
    StateWriter(model)({k: v.double() for k, v in state.items()})  # converted to the model's dtype
    got = read_state(model)
    exact = kind != "fft"  # fft writes θ_pre + τ and reads back (θ_pre + τ) − θ_pre: rounding only
    for k, v in state.items():
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k], v) if exact else torch.allclose(got[k], v, atol=1e-6)
    assert {n: id(p) for n, p in model.named_parameters()} == params_before  # in place: no new objects
    write_state(model, random_like(model, 2))  # the one-off form is the same writer
    assert all(torch.allclose(read_state(model)[k], v, atol=1e-6) for k, v in random_like(model, 2).items())


def test_state_writer_raises_write_states_errors():
    model = model_with()
    writer, state = StateWriter(model), random_like(model, 2)
    writer(state)
    k = next(iter(state))
    layer = k.rsplit(".lora_", 1)[0]  # drop both factors of a layer: one alone is refused as unpaired
    with pytest.raises(ValueError, match="missing"):
        writer({key: v for key, v in state.items() if not key.startswith(layer + ".")})
    with pytest.raises(ValueError, match="shape"):
        writer({**state, k: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="NaN or Inf"):
        writer({**state, k: torch.full_like(state[k], math.nan)})
    with pytest.raises(ValueError, match="kind='lora'"):
        writer({key: v for key, v in state.items() if "lora" not in key})


def test_snapshot_and_restore_are_bit_exact():
    model = model_with()
    writer = StateWriter(model)
    before = read_state(model)
    snap = writer.snapshot()
    writer(random_like(model, 3))
    writer.restore(snap)
    assert all(torch.equal(v, read_state(model)[k]) for k, v in before.items())


@pytest.mark.parametrize("method", ["paper", "linear"])
def test_pair_equals_the_pure_method_bit_for_bit(method):
    s1, s2 = lora_state(1), lora_state(2)
    compose = pair(method, s1, s2)
    for lam in (0.0, 0.3, 0.5, 1.0, 1.7, -0.4):
        want = M.compose(method, [s1, s2], [lam, 1 - lam])
        got = compose(lam)
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_pair_refuses_other_methods_and_bad_states():
    with pytest.raises(ValueError, match="merge_methods.compose"):
        pair("ties", lora_state(1), lora_state(2))
    with pytest.raises(ValueError, match="different keys"):
        pair("paper", lora_state(1), {k: v for k, v in lora_state(2).items() if k != "head.weight"})


# ------------------------------------------------------------------------------------ ΔW errors
def test_paper_error_is_the_cross_term_error_and_exact_methods_have_none():
    s1, s2 = lora_state(1), lora_state(2)
    for lam in (0.25, 0.5):
        assert MC.delta_error("paper", s1, s2, lam, SETTINGS, 2.0) == pytest.approx(
            A.cross_term_error(s1, s2, lam, 2.0), rel=1e-6)
        assert MC.delta_error("paper", s1, s2, lam, SETTINGS, 2.0) > 0.01
        for exact in ("cat", "task_arith"):
            assert MC.delta_error(exact, s1, s2, lam, SETTINGS, 2.0) < 1e-6


def test_shared_a_removes_the_papers_cross_terms_but_not_linears():
    """B₁A + B₂A summed factor-wise is exact; peft's √λ split still doubles up the update."""
    g = torch.Generator().manual_seed(9)
    a = [torch.randn(2, 6, generator=g) for _ in range(2)]
    s1, s2 = lora_state(1, shared_a=a), lora_state(2, shared_a=a)
    assert MC.delta_error("paper", s1, s2, 0.5, SETTINGS, 1.0) < 1e-6
    # linear at λ = ½: B = √½(B₁+B₂), A = 2√½·A, so ΔW = (B₁+B₂)A = 2× the exact (B₁+B₂)A/2: error exactly 1
    assert MC.delta_error("linear", s1, s2, 0.5, SETTINGS, 1.0) == pytest.approx(1.0, rel=1e-5)


def test_dare_error_at_an_endpoint_is_its_rescaling_noise():
    """At λ = 1 DARE keeps each entry with prob. ½ and doubles it: ‖ΔW_dare − ΔW‖ = ‖ΔW‖ in expectation."""
    big = lora_state(1, d_in=60, d_out=50, r=4)
    err = MC.delta_error("dare", big, lora_state(2, d_in=60, d_out=50, r=4), 1.0, SETTINGS, 1.0)
    assert err == pytest.approx(1.0, abs=0.05)


def test_numerical_rank_ignores_float32_rounding():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(40, 3, generator=g) @ torch.randn(3, 30, generator=g)
    assert MC.numerical_rank(m) == 3
    assert MC.numerical_rank(torch.zeros(4, 4)) == 0


# ------------------------------------------------------------------------------------ costs, rule
def test_cost_rows_say_which_results_fit_the_live_adapter_and_restore_the_model():
    model = model_with(r=2)
    s1, s2 = random_like(model, 1), random_like(model, 2)
    before = read_state(model)
    sc = MC.Scenario("toy", "test", model, s1, s2, 2.0, lambda m: {"x": 0.0}, "x", ("a", "b"))
    rows = {r["method"]: r for r in MC.cost_rows(sc, SETTINGS)}
    assert [m for m, r in rows.items() if r["fits_live_adapter"]] == ["paper", "linear", "svd"]
    assert rows["cat"]["rank"] == 4 and math.isnan(rows["cat"]["apply_ms"])
    assert rows["task_arith"]["returns"] == "dense ΔW" and rows["task_arith"]["rank"] <= 4
    assert rows["cat"]["size_mib"] == pytest.approx(2 * rows["paper"]["size_mib"], rel=0.2)
    assert all(torch.equal(v, read_state(model)[k]) for k, v in before.items())


def table(scores, fits, times):
    return pd.DataFrame({"score at λ=0.5": scores, "fits_live_adapter": fits, "compose_ms": times,
                         "apply_ms": [0.0] * len(times)}, index=["a", "b", "c"])


def test_recommend_takes_the_cheapest_method_within_the_tolerance():
    t = table([0.80, 0.795, 0.70], [False, True, True], [5.0, 1.0, 0.1])
    rec = MC.recommend(t, tolerance=0.01)
    assert rec["method"] == "b" and rec["best_method"] == "a" and rec["candidates"] == ["b", "a"]
    assert MC.recommend(t, tolerance=0.0)["method"] == "a"
    assert MC.recommend(t, tolerance=0.2)["method"] == "c"  # fits, and the fastest
    with pytest.raises(ValueError, match="no method"):
        MC.recommend(t.assign(**{"score at λ=0.5": np.nan}), 0.01)


def test_quality_reads_lambda_half_and_the_best_lambda():
    sweep = pd.DataFrame({"scenario": ["s"] * 3, "method": ["m"] * 3, "lam": [0.0, 0.5, 1.0],
                          "score": [0.6, 0.7, 0.9]})
    q = MC.quality(sweep).iloc[0]
    assert q["score at λ=0.5"] == 0.7 and q["best score"] == 0.9 and q["best λ"] == 1.0


def test_settings_need_lambda_half():
    p = load_profile("smoke")
    assert MC.settings(p).lam_grid[0] == 0.0
    with pytest.raises(ValueError, match="0.5"):
        MC.settings(p, lam_grid=(0.0, 1.0))
    with pytest.raises(ValueError, match="unknown method"):
        MC.method_kwargs("nope", SETTINGS, 1.0)


def test_factor_difference_is_zero_for_shared_factors_and_two_for_opposite_ones():
    s1 = lora_state(1)
    s2 = {k: (-v if "lora_B" in k else v) for k, v in s1.items()}
    assert MC.factor_difference(s1, s2, "A") == 0.0
    assert math.isinf(MC.factor_difference(s1, s2, "B"))
    s3 = {k: 3 * v for k, v in s1.items()}
    assert MC.factor_difference(s1, s3, "A") == pytest.approx(1.0)  # ‖A − 3A‖ / ‖2A‖
    with pytest.raises(ValueError, match="factor"):
        MC.factor_difference(s1, s2, "C")


def test_a_sweep_with_a_reused_writer_restores_the_module():
    from pemnb.sweep import in_place, restored, sweep

    model = model_with()
    writer = StateWriter(model)
    s1, s2 = random_like(model, 1), random_like(model, 2)
    writer(s1)
    with restored(writer):
        rows = sweep(pair("paper", s1, s2), [0.0, 1.0],
                     in_place(model, lambda m: {"a": float(read_state(m)[next(iter(s1))].sum())}, writer), progress=False)
    k = next(iter(s1))
    assert [r["a"] for r in rows] == pytest.approx([float(s2[k].sum()), float(s1[k].sum())])
    assert all(torch.equal(v, read_state(model)[key]) for key, v in s1.items())
