"""merge_methods.prepare: the weight-independent work (ΔWᵢ, trims, drop masks) done once per sweep gives
the same results, bit for bit, as composing every point from scratch (the per-point code as it was)."""
import pytest
import torch

from pemnb import arithmetic as A
from pemnb import merge_methods as M

S = 2.0


def lora_state(seed, layers=3, d_in=9, d_out=6, r=2):
    g = torch.Generator().manual_seed(seed)
    s = {}
    for i in range(layers):
        s[f"enc.{i}.value.lora_A.weight"] = torch.randn(r, d_in, generator=g)
        s[f"enc.{i}.value.lora_B.weight"] = torch.randn(d_out, r, generator=g)
    s["classifier.weight"] = torch.randn(2, d_in, generator=g)
    return s


# The per-point implementations as they were before `prepare` (everything recomputed at each weight).
def reference_dense(state):
    return {t: S * (b @ a) for t, (a, b) in A.lora_pairs(state).items()}


def reference_extras(states, weights):
    return {k: sum(w * s[k] for w, s in zip(weights, states)) for k in states[0] if A.role(k) == "other"}


def reference_trim(dw, density):
    k = int(round(density * dw.numel()))
    if k >= dw.numel():
        return dw.clone()
    mask = torch.zeros(dw.numel(), dtype=torch.bool)
    mask[dw.abs().flatten().topk(k).indices] = True
    return dw * mask.view_as(dw)


def reference_ties(states, weights, density, majority, normalize):
    deltas = [reference_dense(s) for s in states]
    w = torch.tensor(weights, dtype=torch.float64)
    layers = {}
    for t in deltas[0]:
        stacked = torch.stack([reference_trim(d[t], density) for d in deltas]).double()
        weighted = stacked * w.view(-1, 1, 1)
        elect = weighted.sum(0) if majority == "total" else weighted.sign().sum(0)
        keep = (weighted.sign() == torch.where(elect >= 0, 1.0, -1.0)) & (stacked != 0)
        merged = (weighted * keep).sum(0)
        if normalize:
            divisor = (w.view(-1, 1, 1) * keep).sum(0)
            merged = merged / torch.where(divisor.abs() < 1e-12, torch.ones_like(divisor), divisor)
        layers[t] = merged.to(deltas[0][t].dtype)
    return layers


def reference_dare(states, weights, p, seed):
    deltas = [reference_dense(s) for s in states]
    gen = torch.Generator().manual_seed(seed)
    layers = {t: torch.zeros_like(dw) for t, dw in deltas[0].items()}
    for w, d in zip(weights, deltas):
        for t in sorted(d):
            keep = torch.rand(d[t].shape, generator=gen) >= p
            layers[t] += w * d[t] * keep / (1.0 - p)
    return layers


def reference_task_arith(states, weights):
    deltas = [reference_dense(s) for s in states]
    return {t: sum(w * d[t] for w, d in zip(weights, deltas)) for t in deltas[0]}


STATES = [lora_state(i) for i in range(4)]
GRID = [[lam, 1 - lam, 0.3, -0.2] for lam in (0.0, 0.25, 0.5, 1.0, 1.5)]


def assert_same(got, want_layers, want_extras):
    assert set(got.layers) == set(want_layers)
    for t in want_layers:
        assert torch.equal(got.layers[t], want_layers[t]), t
    for k in want_extras:
        assert torch.equal(got.extras[k], want_extras[k]), k


@pytest.mark.parametrize("majority", ["total", "frequency"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_prepared_ties_equals_per_point_ties_bit_for_bit(majority, normalize, density):
    at = M.prepare("ties", STATES, scaling=S, density=density, majority=majority, normalize=normalize)
    for w in GRID:
        want = reference_ties(STATES, w, density, majority, normalize)
        assert_same(at(w), want, reference_extras(STATES, w))
        assert_same(M.compose("ties", STATES, w, scaling=S, density=density, majority=majority,
                              normalize=normalize), want, reference_extras(STATES, w))


def test_prepared_dare_and_task_arith_equal_the_per_point_code():
    dare, exact = M.prepare("dare", STATES, scaling=S, drop_rate=0.3, seed=5), M.prepare("task_arith", STATES, scaling=S)
    for w in GRID:
        assert_same(dare(w), reference_dare(STATES, w, 0.3, 5), reference_extras(STATES, w))
        assert_same(M.compose("dare", STATES, w, scaling=S, drop_rate=0.3, seed=5),
                    reference_dare(STATES, w, 0.3, 5), {})
        assert_same(exact(w), reference_task_arith(STATES, w), reference_extras(STATES, w))


@pytest.mark.parametrize("method,kw", [("paper", {}), ("linear", {}), ("cat", {}), ("svd", {"scaling": S}),
                                       ("svd", {"scaling": S, "rank": 4})])
def test_every_method_prepares_to_what_compose_gives(method, kw):
    at = M.prepare(method, STATES, **kw)
    for w in GRID:
        got, want = at(w), M.compose(method, STATES, w, **kw)
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_prepared_method_reuses_its_trims_across_points(monkeypatch):
    calls = []
    real = M._trim
    monkeypatch.setattr(M, "_trim", lambda dw, d: calls.append(1) or real(dw, d))
    at = M.prepare("ties", STATES, scaling=S)
    n = len(calls)
    assert n == len(STATES) * 3
    for w in GRID:
        at(w)
    assert len(calls) == n  # no trim per point


def test_prepare_checks_its_inputs_once_and_its_weights_at_every_point():
    with pytest.raises(ValueError, match="unknown composition method"):
        M.prepare("nope", STATES)
    bad = dict(STATES[1])
    bad.pop("enc.0.value.lora_A.weight")
    for method, kw in (("ties", {"scaling": S}), ("paper", {}), ("dare", {"scaling": S})):
        with pytest.raises(ValueError):
            M.prepare(method, [STATES[0], bad], **kw)
    with pytest.raises(ValueError, match="density"):
        M.prepare("ties", STATES, scaling=S, density=0.0)
    at = M.prepare("ties", STATES, scaling=S)
    with pytest.raises(ValueError):
        at([1.0, 0.0])  # 2 weights for 4 states
    with pytest.raises(ValueError):
        at([float("nan"), 0.0, 0.0, 0.0])
