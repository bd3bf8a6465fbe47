"""Every identity of the module arithmetic, checked to float precision on hand-made states."""
import math

import pytest
import torch

from pemnb import arithmetic as A


def lora_state(seed=0, layers=2, d=6, r=3, head=True):
    g = torch.Generator().manual_seed(seed)
    s = {}
    for i in range(layers):
        s[f"enc.{i}.query.lora_A.weight"] = torch.randn(r, d, generator=g)
        s[f"enc.{i}.query.lora_B.weight"] = torch.randn(d, r, generator=g)
    if head:
        s["classifier.weight"] = torch.randn(2, d, generator=g)
    return s


def ia3_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"enc.0.key.ia3_l": 1 + 0.3 * torch.randn(6, 1, generator=g),
            "enc.0.ffn.ia3_l": 1 + 0.3 * torch.randn(1, 8, generator=g)}


def fft_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"enc.0.weight": torch.randn(4, 4, generator=g), "enc.0.bias": torch.randn(4, generator=g)}


STATES = {"lora": lora_state, "ia3": ia3_state, "fft": fft_state}


def assert_same(s1, s2, atol=0.0):
    assert set(s1) == set(s2)
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k], atol=atol, rtol=0 if atol == 0 else 1e-6)


# ------------------------------------------------------------------------------------- negation
@pytest.mark.parametrize("factor", ["A", "B"])
def test_negated_lora_delta_is_minus_delta(factor):
    s = lora_state()
    dw, dneg = A.delta_weights(s, 2.0), A.delta_weights(A.negate(s, "lora", factor=factor), 2.0)
    for k in dw:
        torch.testing.assert_close(dneg[k], -dw[k])


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 1.7])
def test_scaled_negation_of_lora_is_minus_lambda_delta(lam):
    s = lora_state()
    dw, dneg = A.delta_weights(s, 0.5), A.delta_weights(A.negate(s, "lora", lam), 0.5)
    for k in dw:
        torch.testing.assert_close(dneg[k], -lam * dw[k])


def test_negation_leaves_the_head_alone():
    s = lora_state()
    assert torch.equal(A.negate(s, "lora")["classifier.weight"], s["classifier.weight"])


def test_ia3_negated_twice_is_the_original():
    s = ia3_state()
    assert_same(A.negate(A.negate(s, "ia3"), "ia3"), s, atol=1e-6)


def test_ia3_negation_formula():
    s = ia3_state()
    n1, n6 = A.negate(s, "ia3"), A.negate(s, "ia3", 0.6)
    for k in s:
        torch.testing.assert_close(n1[k], 2 - s[k])
        torch.testing.assert_close(n6[k], 1 - 0.6 * (s[k] - 1))
    # the identity module stays the identity
    ones = {k: torch.ones_like(v) for k, v in s.items()}
    assert_same(A.negate(ones, "ia3", 0.37), ones)


def test_fft_negation_is_minus_lambda_tau():
    s = fft_state()
    n = A.negate(s, "fft", 0.4)
    for k in s:
        torch.testing.assert_close(n[k], -0.4 * s[k])


# ------------------------------------------------------------------------------------- ablation
def test_ablation_is_a_noop_for_lora():
    s = lora_state()
    dw, dab = A.delta_weights(s, 2.0), A.delta_weights(A.ablate(s, "lora"), 2.0)
    for k in dw:
        torch.testing.assert_close(dab[k], dw[k])


def test_ablation_flips_ia3_vectors():
    s = ia3_state()
    ab = A.ablate(s, "ia3", 0.6)
    for k in s:
        torch.testing.assert_close(ab[k], -0.6 * s[k])
        assert (ab[k] < 0).all()  # every activation is flipped: the model breaks


def test_ablation_rejects_fft():
    with pytest.raises(ValueError, match="PEMs"):
        A.ablate(fft_state(), "fft")


# ------------------------------------------------------------------------------------- addition
@pytest.mark.parametrize("kind", ["lora", "ia3", "fft"])
def test_merge_endpoints(kind):
    s1, s2 = STATES[kind](1), STATES[kind](2)
    assert_same(A.merge(s1, s2, 1.0, kind), s1)
    assert_same(A.merge(s1, s2, 0.0, kind), s2)


@pytest.mark.parametrize("kind", ["lora", "ia3", "fft"])
def test_merge_is_elementwise(kind):
    s1, s2 = STATES[kind](1), STATES[kind](2)
    m = A.merge(s1, s2, 0.3, kind)
    for k in s1:
        torch.testing.assert_close(m[k], 0.3 * s1[k] + 0.7 * s2[k])


def test_lora_merge_has_cross_terms():
    # The paper adds A and B separately: ΔW of the merge is NOT the merge of the ΔWs.
    s1, s2 = lora_state(1), lora_state(2)
    m = A.delta_weights(A.merge(s1, s2, 0.5, "lora"), 1.0)
    d1, d2 = A.delta_weights(s1, 1.0), A.delta_weights(s2, 1.0)
    exact = {k: 0.5 * d1[k] + 0.5 * d2[k] for k in d1}
    assert A.relative_error(m, exact) > 0.1
    # the difference is exactly the cross terms: 0.25 (B1A2 + B2A1 - B1A1 - B2A2)
    for t, (a1, b1) in A.lora_pairs(s1).items():
        a2, b2 = A.lora_pairs(s2)[t]
        expected = 0.25 * (b1 @ a2 + b2 @ a1 - b1 @ a1 - b2 @ a2)
        torch.testing.assert_close(m[t] - exact[t], expected, rtol=1e-5, atol=1e-5)


def test_cross_term_error_vanishes_at_the_endpoints_and_for_shared_a():
    s1, s2 = lora_state(1), lora_state(2)
    assert A.cross_term_error(s1, s2, 1.0) == pytest.approx(0, abs=1e-7)
    assert A.cross_term_error(s1, s2, 0.0) == pytest.approx(0, abs=1e-7)
    assert A.cross_term_error(s1, s2, 0.5) > 0.1
    # with the same A (a shared, untrained A) addition of B is exact: no cross terms
    same_a = {k: (s1[k] if "lora_A" in k else v) for k, v in s2.items()}
    assert A.cross_term_error(s1, same_a, 0.3) == pytest.approx(0, abs=1e-6)


def test_nary_add_normalises_weights():
    s = [ia3_state(i) for i in range(3)]
    a = A.add(s, [1, 1, 2], "ia3")
    for k in s[0]:
        torch.testing.assert_close(a[k], 0.25 * s[0][k] + 0.25 * s[1][k] + 0.5 * s[2][k])
    ones = {k: torch.ones_like(v) for k, v in s[0].items()}
    assert_same(A.add([ones, ones], [3, 5], "ia3"), ones)


def test_add_then_add_negation_is_identity():
    for kind, fn in STATES.items():
        s = fn(3)
        m = A.merge(s, A.negate(s, kind), 0.5, kind)
        ident = A.identity_like(s, kind)
        if kind == "lora":  # A cancels, B stays: ΔW = 0
            for v in A.delta_weights(m, 1.0).values():
                assert torch.count_nonzero(v) == 0
        else:
            assert_same(m, ident, atol=1e-6)


# ------------------------------------------------------------------------------------- analogy
def test_analogy_matches_hand_computation():
    c, t, s = lora_state(1, head=False), lora_state(2, head=False), lora_state(3, head=False)
    lam = 0.86
    out = A.analogy(c, t, s, lam, "lora")
    k_a, k_b = "enc.0.query.lora_A.weight", "enc.0.query.lora_B.weight"
    torch.testing.assert_close(out[k_a], lam * c[k_a] + (1 - lam) * t[k_a] + (1 - lam) * s[k_a])
    torch.testing.assert_close(out[k_b], lam * c[k_b] + (1 - lam) * t[k_b] - (1 - lam) * s[k_b])
    # hand-computed numbers on a 1-element example
    one = lambda a, b: {"x.lora_A.weight": torch.tensor([[a]]), "x.lora_B.weight": torch.tensor([[b]])}
    r = A.analogy(one(1.0, 2.0), one(3.0, 4.0), one(5.0, 6.0), 0.5, "lora")
    assert r["x.lora_A.weight"].item() == pytest.approx(0.5 * 1 + 0.5 * 3 + 0.5 * 5)  # 4.5
    assert r["x.lora_B.weight"].item() == pytest.approx(0.5 * 2 + 0.5 * 4 - 0.5 * 6)  # 0.0


def test_analogy_ia3_and_fft():
    c, t, s = ia3_state(1), ia3_state(2), ia3_state(3)
    out = A.analogy(c, t, s, 0.9, "ia3")
    for k in c:
        torch.testing.assert_close(out[k], 1 + 0.9 * (c[k] - 1) + 0.1 * ((t[k] - 1) - (s[k] - 1)))
    c, t, s = fft_state(1), fft_state(2), fft_state(3)
    out = A.analogy(c, t, s, 0.9, "fft")
    for k in c:
        torch.testing.assert_close(out[k], 0.9 * c[k] + 0.1 * (t[k] - s[k]))
    assert_same(A.analogy(c, t, s, 1.0, "fft"), c)


# ------------------------------------------------------------------------------------- bad input
def test_error_on_empty_list():
    with pytest.raises(ValueError, match="empty"):
        A.add([], [], "lora")


def test_error_on_empty_state():
    with pytest.raises(ValueError, match="empty module state"):
        A.negate({}, "lora")


def test_error_on_different_kinds():
    with pytest.raises(ValueError, match="kind='lora'.*looks like 'ia3'"):
        A.merge(lora_state(), ia3_state(), 0.5, "lora")


def test_error_on_wrong_kind_label():
    with pytest.raises(ValueError, match="kind='ia3'"):
        A.negate(lora_state(), "ia3")
    with pytest.raises(ValueError, match="unknown module kind"):
        A.negate(lora_state(), "adapter")


def test_error_on_different_keys():
    with pytest.raises(ValueError, match="different keys"):
        A.merge(lora_state(layers=2), lora_state(layers=1), 0.5, "lora")


def test_error_on_different_shapes():
    with pytest.raises(ValueError, match="shape"):
        A.merge(lora_state(r=3), lora_state(r=2), 0.5, "lora")


def test_error_on_wrong_number_of_weights():
    with pytest.raises(ValueError, match="3 weights for 2 modules"):
        A.add([lora_state(1), lora_state(2)], [0.2, 0.3, 0.5], "lora")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_error_on_nan_or_inf(bad):
    s = lora_state()
    s["enc.0.query.lora_A.weight"][0, 0] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        A.negate(s, "lora")
    with pytest.raises(ValueError, match="module 1"):
        A.merge(lora_state(), s, 0.5, "lora")


def test_error_on_nan_weight_and_zero_sum():
    with pytest.raises(ValueError, match="finite"):
        A.add([lora_state(1), lora_state(2)], [math.nan, 1], "lora")
    with pytest.raises(ValueError, match="sum to zero"):
        A.add([lora_state(1), lora_state(2)], [1, -1], "lora")


def test_error_on_bad_factor():
    with pytest.raises(ValueError, match="factor"):
        A.negate(lora_state(), "lora", factor="C")


def test_infer_kind():
    assert A.infer_kind(lora_state()) == "lora"
    assert A.infer_kind(ia3_state()) == "ia3"
    assert A.infer_kind(fft_state()) == "fft"


# ------------------------------------------------------------------ negating a continued training (ch. 05)
def test_negation_of_a_continued_training_is_exact():
    alp, tox = lora_state(0, head=False), lora_state(1, head=False)
    delta = A.toxic_update(alp, tox)
    for k in alp:
        torch.testing.assert_close(delta[k], tox[k] - alp[k], rtol=0, atol=0)
    for lam in (0.0, 0.3, 1.0, 2.0):
        got = A.negate_continued(alp, tox, lam)
        for k in alp:
            torch.testing.assert_close(got[k], alp[k] - lam * delta[k])
    assert A.max_abs_diff(A.negate_continued(alp, tox, 0.0), alp) == 0.0
    assert A.max_abs_diff(A.negate_continued(alp, tox, 0.0, "official"), alp) == 0.0
    off = A.negate_continued(alp, tox, 0.4, "official")
    for k in alp:
        if A.role(k) == "lora_A":  # the official A is the stated operator's A ...
            torch.testing.assert_close(off[k], alp[k] + 0.4 * (alp[k] - tox[k]))
        else:  # ... its B adds B_tox instead of subtracting it
            torch.testing.assert_close(off[k], alp[k] + 0.4 * (alp[k] + tox[k]))


def test_negation_of_a_continued_training_refuses_bad_input():
    alp, tox = lora_state(0, head=False), lora_state(1, head=False)
    with pytest.raises(ValueError, match="variant"):
        A.negate_continued(alp, tox, 0.5, "other")
    with pytest.raises(ValueError):
        A.negate_continued(alp, {k: v for k, v in tox.items() if ".0." not in k}, 0.5)
    with pytest.raises(ValueError):
        A.toxic_update(alp, {k: v for k, v in tox.items() if ".0." not in k})
    with pytest.raises(ValueError, match="finite"):
        A.negate_continued(alp, tox, float("nan"))
    with pytest.raises(ValueError):
        A.toxic_update(alp, ia3_state(0))
