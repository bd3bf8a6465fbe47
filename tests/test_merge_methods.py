"""Composition methods: each exactness identity or property checked on hand-made LoRA states."""
import math

import pytest
import torch

from pemnb import arithmetic as A
from pemnb import merge_methods as M

S = 2.0  # LoRA scaling α/r used throughout


def lora_state(seed=0, layers=2, d_in=7, d_out=5, r=3, head=True, positive=False):
    g = torch.Generator().manual_seed(seed)
    s = {}
    for i in range(layers):
        a, b = torch.randn(r, d_in, generator=g, dtype=torch.float64), torch.randn(d_out, r, generator=g,
                                                                                   dtype=torch.float64)
        s[f"enc.{i}.query.lora_A.weight"] = a.abs() if positive else a
        s[f"enc.{i}.query.lora_B.weight"] = b.abs() if positive else b
    if head:
        s["classifier.weight"] = torch.randn(2, d_in, generator=g, dtype=torch.float64)
    return s


def delta(state, scaling):
    """ΔW = s·B·A per layer in the state's own dtype (float64 here)."""
    return {t: scaling * (b @ a) for t, (a, b) in A.lora_pairs(state).items()}


def exact_sum(states, weights, scaling=S):
    deltas = [delta(s, scaling) for s in states]
    return {t: sum(w * d[t] for w, d in zip(weights, deltas)) for t in deltas[0]}


def assert_layers_close(got, want, **kw):
    assert set(got) == set(want)
    for t in want:
        torch.testing.assert_close(got[t], want[t], **kw)


STATES = [lora_state(0), lora_state(1), lora_state(2)]
WEIGHTS = [0.7, -0.4, 1.3]


# ------------------------------------------------------------------------------------ exact methods
def test_rank_concatenation_reproduces_the_weighted_sum_of_updates():
    out = M.cat(STATES, WEIGHTS)
    assert M.rank_of(out) == 9
    assert_layers_close(delta(out, S), exact_sum(STATES, WEIGHTS), rtol=1e-12, atol=1e-12)


def test_rank_concatenation_stacks_the_factors_in_order():
    out = M.cat(STATES[:2], [0.5, 2.0])
    k = "enc.0.query.lora_A.weight"
    torch.testing.assert_close(out[k][:3], 0.5 * STATES[0][k])
    torch.testing.assert_close(out[k][3:], 2.0 * STATES[1][k])
    kb = "enc.0.query.lora_B.weight"
    assert torch.equal(out[kb][:, 3:], STATES[1][kb])


def test_task_arithmetic_is_the_exact_sum_and_says_it_is_dense():
    out = M.task_arith(STATES, WEIGHTS, scaling=S)
    assert isinstance(out, M.DenseDelta)
    assert_layers_close(out.layers, exact_sum(STATES, WEIGHTS), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.extras["classifier.weight"],
                               sum(w * s["classifier.weight"] for w, s in zip(WEIGHTS, STATES)))


def test_svd_at_full_rank_is_exact():
    out = M.svd(STATES, WEIGHTS, scaling=S, rank=5)  # min(d_out, d_in) = 5
    assert_layers_close(delta(out, S), exact_sum(STATES, WEIGHTS), rtol=1e-10, atol=1e-10)


def test_svd_at_rank_r_is_the_best_rank_r_approximation():
    states = [lora_state(0, d_in=12, d_out=10), lora_state(1, d_in=12, d_out=10)]
    out = M.svd(states, [0.5, 0.5], scaling=S)
    assert M.rank_of(out) == 3  # fits the live model's LoRA
    exact = exact_sum(states, [0.5, 0.5])
    got = delta(out, S)
    for t in exact:
        sv = torch.linalg.svdvals(exact[t])
        assert torch.linalg.matrix_rank(got[t]) == 3
        err = torch.linalg.norm(got[t] - exact[t])
        torch.testing.assert_close(err, sv[3:].pow(2).sum().sqrt())  # Eckart–Young


def test_factorise_inverts_dense():
    s = STATES[0]
    back = M.factorise(M.dense(s, S), rank=3, scaling=S)
    assert_layers_close(delta(back, S), delta(s, S), rtol=1e-10, atol=1e-10)
    assert torch.equal(back["classifier.weight"], s["classifier.weight"])


# ------------------------------------------------------------------------------ cross-term methods
def test_paper_addition_is_arithmetic_merge_and_carries_cross_terms():
    t1, t2, lam = STATES[0], STATES[1], 0.3
    out = M.compose("paper", [t1, t2], [lam, 1 - lam])
    for k in out:
        assert torch.equal(out[k], A.merge(t1, t2, lam, "lora")[k])
    p1, p2 = A.lora_pairs(t1), A.lora_pairs(t2)
    got, exact = delta(out, S), exact_sum([t1, t2], [lam, 1 - lam])
    for t, ((a1, b1), (a2, b2)) in zip(p1, zip(p1.values(), p2.values())):
        cross = S * lam * (1 - lam) * (b1 @ a2 + b2 @ a1 - b1 @ a1 - b2 @ a2)
        torch.testing.assert_close(got[t] - exact[t], cross)


def test_linear_splits_each_weight_as_its_square_root():
    out = M.linear(STATES[:2], [0.64, -0.25])
    for t, (a, b) in A.lora_pairs(out).items():
        (a1, b1), (a2, b2) = A.lora_pairs(STATES[0])[t], A.lora_pairs(STATES[1])[t]
        torch.testing.assert_close(a, 0.8 * a1 - 0.5 * a2)
        torch.testing.assert_close(b, 0.8 * b1 + 0.5 * b2)


def test_linear_and_paper_agree_with_the_exact_sum_for_one_module():
    for method in ("linear", "paper"):
        out = M.compose(method, [STATES[0]], [1.0])
        assert_layers_close(delta(out, S), exact_sum([STATES[0]], [1.0]))


def test_a_negative_weight_negates_the_update():
    for method in ("linear", "cat"):
        out = M.compose(method, [STATES[0]], [-1.0])
        assert_layers_close(delta(out, S), exact_sum([STATES[0]], [-1.0]))
    # …but not in the paper's addition: (−B)(−A) = BA, why the paper negates one factor only
    out = M.compose("paper", [STATES[0]], [-1.0])
    assert_layers_close(delta(out, S), exact_sum([STATES[0]], [1.0]))


@pytest.mark.parametrize("combination", ["linear", "cat", "svd"])
def test_methods_match_peft_add_weighted_adapter(combination):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(0)
    base = torch.nn.Sequential()
    base.add_module("lin0", torch.nn.Linear(10, 20))
    base.add_module("lin1", torch.nn.Linear(20, 6))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["lin0", "lin1"], init_lora_weights=False)
    model = get_peft_model(base, cfg, adapter_name="m1")
    model.add_adapter("m2", cfg)
    states = []
    for name in ("m1", "m2"):
        states.append({f"{n}.lora_{f}.weight": getattr(m, f"lora_{f}")[name].weight.detach().clone()
                       for n, m in model.base_model.model.named_modules() if isinstance(m, LoraLayer)
                       for f in ("A", "B")})
    weights = [0.7, -0.3]
    model.add_weighted_adapter(["m1", "m2"], weights, "mix", combination_type=combination)
    peft_dw = {n: m.get_delta_weight("mix").detach() for n, m in model.base_model.model.named_modules()
               if isinstance(m, LoraLayer)}
    ours = M.compose(combination, states, weights, **({"scaling": 2.0} if combination == "svd" else {}))
    assert_layers_close(delta(ours, 2.0), peft_dw, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------- TIES
def test_ties_with_density_one_and_no_sign_conflict_is_the_sum():
    states = [lora_state(i, positive=True) for i in range(3)]  # every ΔW entry > 0: no conflict
    weights = [0.2, 0.5, 0.3]
    exact = exact_sum(states, weights)
    for normalize in (False, True):  # weights sum to 1, so the disjoint mean is the sum too
        out = M.ties(states, weights, scaling=S, density=1.0, normalize=normalize)
        assert_layers_close(out.layers, exact, rtol=1e-12, atol=1e-12)


def test_ties_drops_the_minority_sign():
    s1 = lora_state(0, positive=True)
    # the same update with weights 1 and −0.25: the plain sum would be 0.75·ΔW; TIES keeps module 1 only
    out = M.ties([s1, s1], [1.0, -0.25], scaling=S, density=1.0)
    assert_layers_close(out.layers, delta(s1, S), rtol=1e-12, atol=1e-12)
    out = M.ties([s1, s1], [1.0, -0.25], scaling=S, density=1.0, majority="frequency")
    # one vote each: a tie goes to '+', so module 1's entries are kept again
    assert_layers_close(out.layers, delta(s1, S), rtol=1e-12, atol=1e-12)
    out = M.ties([s1, s1], [-1.0, 0.25], scaling=S, density=1.0)  # mass says '−'
    assert_layers_close(out.layers, {t: -v for t, v in delta(s1, S).items()}, rtol=1e-12, atol=1e-12)


def test_ties_trims_to_the_density():
    out = M.ties([STATES[0]], [1.0], scaling=S, density=0.2)
    dw = delta(STATES[0], S)
    for t, m in out.layers.items():
        k = round(0.2 * m.numel())
        assert int((m != 0).sum()) == k
        kept = m[m != 0].abs()
        assert float(kept.min()) >= float(dw[t].abs().flatten().topk(k).values.min())


# --------------------------------------------------------------------------------------------- DARE
def test_dare_without_dropping_is_the_exact_sum():
    out = M.dare(STATES, WEIGHTS, scaling=S, drop_rate=0.0)
    assert_layers_close(out.layers, exact_sum(STATES, WEIGHTS), rtol=1e-12, atol=1e-12)


def test_dare_is_seeded_and_rescales_survivors():
    a = M.dare([STATES[0]], [1.0], scaling=S, drop_rate=0.5, seed=3)
    b = M.dare([STATES[0]], [1.0], scaling=S, drop_rate=0.5, seed=3)
    c = M.dare([STATES[0]], [1.0], scaling=S, drop_rate=0.5, seed=4)
    dw = delta(STATES[0], S)
    assert_layers_close(a.layers, b.layers, rtol=0, atol=0)
    assert any(not torch.equal(a.layers[t], c.layers[t]) for t in dw)
    for t in dw:
        kept = a.layers[t] != 0
        torch.testing.assert_close(a.layers[t][kept], 2.0 * dw[t][kept])
        assert 0 < int(kept.sum()) < kept.numel()


def test_dare_is_unbiased_in_expectation():
    n, p = 2000, 0.6
    exact = exact_sum(STATES[:2], [0.5, 0.5])
    mean = {t: sum(M.dare(STATES[:2], [0.5, 0.5], scaling=S, drop_rate=p, seed=i).layers[t]
                   for i in range(n)) / n for t in exact}
    for t in exact:
        # per entry the estimator's std is ≤ sqrt(p/(1−p))·Σ|wᵢΔWᵢ|; allow 5 standard errors
        bound = 5 * math.sqrt(p / (1 - p) / n) * (0.5 * delta(STATES[0], S)[t].abs()
                                                 + 0.5 * delta(STATES[1], S)[t].abs())
        assert bool(((mean[t] - exact[t]).abs() <= bound + 1e-12).all())


# ------------------------------------------------------------------------------------ registry, errors
def test_every_method_is_registered_with_a_source_its_return_type_and_its_parameters():
    assert set(M.METHODS) >= {"paper", "linear", "cat", "svd", "task_arith", "ties", "dare", "knots", "tsv_m",
                              "iso_c"}
    for name, m in M.METHODS.items():
        assert m.fn.__doc__ and m.reference and m.display and m.update
        out = M.compose(name, STATES[:2], [0.5, 0.5], **m.kwargs(scaling=S))  # declared defaults suffice
        assert isinstance(out, M.DenseDelta) == (m.returns == "delta")
        if m.same_update_as:
            twin = M.METHODS[m.same_update_as]
            got = out.layers if isinstance(out, M.DenseDelta) else delta(out, S)
            want = M.compose(twin.name, STATES[:2], [0.5, 0.5], **twin.kwargs(scaling=S))
            assert_layers_close(got, want.layers if isinstance(want, M.DenseDelta) else delta(want, S))
    assert [r["method"] for r in M.registry_rows()] == list(M.METHODS)


def test_method_kwargs_come_from_the_settings_fields_the_registry_names():
    class Settings:
        ties_density, dare_drop_rate, dare_seed = 0.7, 0.3, 5

    assert M.METHODS["ties"].kwargs(Settings(), 2.0) == {"scaling": 2.0, "density": 0.7}
    assert M.METHODS["dare"].kwargs(Settings(), 2.0) == {"scaling": 2.0, "drop_rate": 0.3, "seed": 5}
    assert M.METHODS["knots"].kwargs(Settings(), 2.0) == {"density": 0.7}
    assert M.METHODS["paper"].kwargs(Settings(), 2.0) == {}
    with pytest.raises(ValueError, match="needs the LoRA scaling"):
        M.METHODS["task_arith"].kwargs(Settings())
    with pytest.raises(ValueError, match="'ties_density', which these settings do not have"):
        M.METHODS["ties"].kwargs(object(), 1.0)


def test_register_checks_the_declared_parameters_against_the_function():
    def fn(states, weights, *, k: int = 1):
        return states[0]

    with pytest.raises(ValueError, match=r"declares parameters \[\] but takes \['k'\]"):
        M.register("unchecked", "lora", "x")(fn)
    with pytest.raises(ValueError, match="declares default 2"):
        M.register("unchecked", "lora", "x", params=(M.Param("k", 2),))(fn)
    assert "unchecked" not in M.METHODS


@pytest.mark.parametrize("call, message", [
    (lambda: M.compose("nope", STATES, WEIGHTS), "unknown composition method"),
    (lambda: M.cat(STATES, [1.0]), "got 1 weights for 3 modules"),
    (lambda: M.cat([], []), "the list is empty"),
    (lambda: M.cat([STATES[0], lora_state(5, d_in=8)], [1, 1]), "has shape"),
    (lambda: M.cat([{"x.ia3_l": torch.ones(3)}], [1.0]), "kind='lora'"),
    (lambda: M.linear(STATES, [1.0, float("nan"), 1.0]), "finite"),
    (lambda: M.svd(STATES, WEIGHTS, scaling=S, rank=6), r"rank must be in \[1, 5\]"),
    (lambda: M.svd(STATES, WEIGHTS, scaling=S, rank=0), "rank must be"),
    (lambda: M.task_arith(STATES, WEIGHTS, scaling=0.0), "scaling"),
    (lambda: M.ties(STATES, WEIGHTS, scaling=S, density=0.0), r"density must be in \(0, 1\]"),
    (lambda: M.ties(STATES, WEIGHTS, scaling=S, majority="mode"), "majority"),
    (lambda: M.dare(STATES, WEIGHTS, scaling=S, drop_rate=1.0), r"drop_rate must be in \[0, 1\)"),
    (lambda: M.register("cat", "lora", "x")(lambda s, w: s), "already registered"),
    (lambda: M.register("new", "matrix", "x"), "returns must be"),
])
def test_bad_input_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
