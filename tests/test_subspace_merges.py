"""KnOTS, TSV-M and Iso-C: the properties their papers state, checked exactly on hand-made LoRA states."""
import numpy as np
import pytest
import torch

from pemnb import arithmetic as A
from pemnb import merge_methods as M

S = 2.0  # the LoRA scaling α/r: these methods keep the inputs' s, so ΔW = S·B·A of their result


def lora_state(seed=0, layers=2, d_in=12, d_out=10, r=3, head=True):
    g = torch.Generator().manual_seed(seed)
    s = {}
    for i in range(layers):
        s[f"enc.{i}.query.lora_A.weight"] = torch.randn(r, d_in, generator=g, dtype=torch.float64)
        s[f"enc.{i}.query.lora_B.weight"] = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    if head:
        s["classifier.weight"] = torch.randn(2, d_in, generator=g, dtype=torch.float64)
    return s


def delta(state, scaling=S):
    return {t: scaling * (b @ a) for t, (a, b) in A.lora_pairs(state).items()}


def exact_sum(states, weights):
    ds = [delta(s) for s in states]
    return {t: sum(w * d[t] for w, d in zip(weights, ds)) for t in ds[0]}


def assert_layers_close(got, want, tol=1e-10):
    assert set(got) == set(want)
    for t in want:
        torch.testing.assert_close(got[t], want[t], rtol=tol, atol=tol)


STATES = [lora_state(0), lora_state(1), lora_state(2)]
WEIGHTS = [0.7, -0.4, 1.3]


# ------------------------------------------------------------------------------------ primitives
def test_svd_of_a_product_from_its_factors_is_the_dense_svd():
    (a, b) = A.lora_pairs(STATES[0])["enc.0.query"]
    u, sv, vh = M.svd_of_product(b, a)
    assert u.shape == (10, 3) and vh.shape == (3, 12)
    torch.testing.assert_close((u * sv) @ vh, b @ a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sv, torch.linalg.svdvals(b @ a)[:3], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(u.T @ u, torch.eye(3, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_polar_factor_keeps_orthonormal_columns_and_makes_them():
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(9, 4, generator=g, dtype=torch.float64))
    torch.testing.assert_close(M.polar_factor(q), q, rtol=1e-12, atol=1e-12)
    p = M.polar_factor(torch.randn(9, 4, generator=g, dtype=torch.float64))
    torch.testing.assert_close(p.T @ p, torch.eye(4, dtype=torch.float64), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------- KnOTS
@pytest.mark.parametrize("kw", [{"merge": "average"}, {"merge": "ties", "density": 1.0}])
def test_knots_on_one_module_returns_its_update(kw):
    out = M.knots(STATES[:1], [1.5], **kw)
    assert_layers_close(delta(out), exact_sum(STATES[:1], [1.5]))
    torch.testing.assert_close(out["classifier.weight"], 1.5 * STATES[0]["classifier.weight"])


def test_knots_with_a_weighted_average_of_the_aligned_coordinates_is_the_exact_sum():
    out = M.knots(STATES, WEIGHTS, merge="average")
    assert M.rank_of(out) == 9  # Σrᵢ: the shared basis spans every module's column space
    assert_layers_close(delta(out), exact_sum(STATES, WEIGHTS))
    # B is the shared basis U (orthonormal columns), A the merged coordinates
    for a, b in A.lora_pairs(out).values():
        torch.testing.assert_close(b.T @ b, torch.eye(9, dtype=torch.float64), rtol=1e-10, atol=1e-10)


def test_knots_ties_trims_the_coordinates_and_differs_from_the_sum():
    one = M.knots(STATES[:1], [1.0], density=0.5)
    for a, _ in A.lora_pairs(one).values():
        assert int((a != 0).sum()) == round(0.5 * a.numel())  # one module: TIES keeps its top half
    two = M.knots(STATES[:2], [0.5, 0.5])
    err = A.relative_error(delta(two), exact_sum(STATES[:2], [0.5, 0.5]))
    assert 0.05 < err < 1.0
    # a zero weight leaves the other module alone (its coordinates are never outvoted)
    alone = M.knots(STATES[:2], [0.0, 1.0], density=1.0)
    assert_layers_close(delta(alone), delta(STATES[1]))


# --------------------------------------------------------------------------------------------- TSV-M
def test_tsv_m_with_one_task_is_its_low_rank_approximation():
    dw = delta(STATES[0])
    for k in (1, 2):
        out = M.tsv_m(STATES[:1], [1.0], task_rank=k)
        assert M.rank_of(out) == k
        for t, got in delta(out).items():
            u, sv, vh = torch.linalg.svd(dw[t])
            torch.testing.assert_close(got, (u[:, :k] * sv[:k]) @ vh[:k], rtol=1e-10, atol=1e-10)
    # by default a LoRA task keeps all its r singular vectors: its own update
    assert_layers_close(delta(M.tsv_m(STATES[:1], [1.0])), dw)


def test_tsv_m_of_orthogonal_tasks_is_their_sum_and_decorrelates_otherwise():
    # two updates on orthogonal row and column spaces: nothing to decorrelate, the merge is the sum
    g = torch.Generator().manual_seed(5)
    q_out, _ = torch.linalg.qr(torch.randn(10, 6, generator=g, dtype=torch.float64))
    q_in, _ = torch.linalg.qr(torch.randn(12, 6, generator=g, dtype=torch.float64))
    s1 = {"l.lora_A.weight": torch.randn(3, 3, generator=g, dtype=torch.float64) @ q_in[:, :3].T,
          "l.lora_B.weight": q_out[:, :3] @ torch.randn(3, 3, generator=g, dtype=torch.float64)}
    s2 = {"l.lora_A.weight": torch.randn(3, 3, generator=g, dtype=torch.float64) @ q_in[:, 3:].T,
          "l.lora_B.weight": q_out[:, 3:] @ torch.randn(3, 3, generator=g, dtype=torch.float64)}
    assert_layers_close(delta(M.tsv_m([s1, s2], [0.6, -0.3])), exact_sum([s1, s2], [0.6, -0.3]))
    # overlapping tasks: the merged update's singular vectors are orthonormal, each kept σ scaled by its wᵢ
    out = M.tsv_m(STATES[:2], [1.0, 1.0])
    assert M.rank_of(out) == 6
    for t, got in delta(out).items():
        want_sv = torch.cat([torch.linalg.svdvals(delta(s)[t])[:3] for s in STATES[:2]]).sort(descending=True).values
        torch.testing.assert_close(torch.linalg.svdvals(got)[:6], want_sv, rtol=1e-10, atol=1e-10)
    assert A.relative_error(delta(out), exact_sum(STATES[:2], [1.0, 1.0])) > 0.05


# --------------------------------------------------------------------------------------------- Iso-C
def test_iso_c_flattens_the_spectrum_of_the_sum_and_keeps_its_subspaces():
    out = M.iso_c(STATES[:2], [0.5, 0.5])
    assert M.rank_of(out) == 6
    exact = exact_sum(STATES[:2], [0.5, 0.5])
    for t, got in delta(out).items():
        sv_sum, sv = torch.linalg.svdvals(exact[t]), torch.linalg.svdvals(got)
        flat = sv[:6]
        torch.testing.assert_close(flat, torch.full_like(flat, float(sv_sum[:6].mean())), rtol=1e-10, atol=1e-10)
        assert float(sv[6:].max()) < 1e-10 * float(flat[0])
        torch.testing.assert_close(sv.sum(), sv_sum.sum(), rtol=1e-10, atol=1e-10)  # the trace norm is kept
        # the same column and row spaces: got = σ̄·U·Vᵀ of the sum's U, V
        u, _, vh = torch.linalg.svd(exact[t])
        torch.testing.assert_close(got, flat[0] * u[:, :6] @ vh[:6], rtol=1e-10, atol=1e-10)


def test_iso_c_of_a_module_and_its_negation_is_nothing():
    s = STATES[0]
    out = M.iso_c([s, A.negate(s, "lora")], [1.0, 1.0])
    assert all(float(d.abs().max()) == 0.0 for d in delta(out).values())


# ------------------------------------------------------------------------------ live and grown adapters
def test_a_rank_grown_adapter_takes_each_result_in_place_and_computes_its_update():
    """Each result, written into a LoRA of its rank (α scaled to keep s), computes like its ΔW added to
    the base weights of the live rank-r adapter's model."""
    from pemnb.backbones import load_backbone
    from pemnb.modules import attach, read_state, write_state
    from pemnb.sweep import delta_applied

    def fresh(r):
        model, _ = load_backbone("smoke-bert", "classification", 2, seed=0, device="cpu")
        return attach(model, "lora", r=r, alpha=2 * r, init_seed=0).eval()  # s = 2 at every rank

    live = fresh(2)
    g = torch.Generator().manual_seed(0)
    states = [{k: 0.5 * torch.randn(v.shape, generator=g) for k, v in read_state(live).items()} for _ in range(2)]
    ids = torch.randint(1000, 3000, (3, 9), generator=g)
    for method in ("knots", "tsv_m", "iso_c"):
        out = M.compose(method, states, [0.6, 0.4])
        grown = fresh(M.rank_of(out))
        write_state(grown, out)
        with torch.no_grad(), delta_applied(live, M.dense(out, 2.0)):
            want = live(input_ids=ids).logits
        with torch.no_grad():
            got = grown(input_ids=ids).logits
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method, kw", [("knots", {}), ("knots", {"merge": "average"}), ("tsv_m", {}),
                                        ("tsv_m", {"task_rank": 2})])
def test_prepared_subspace_merges_equal_compose_bit_for_bit(method, kw):
    at = M.prepare(method, STATES, **kw)
    for w in ([0.3, 0.3, 0.4], [1.0, -0.5, 0.0]):
        got, want = at(w), M.compose(method, STATES, w, **kw)
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_results_keep_the_inputs_dtype_and_keys():
    states = [{k: v.float() for k, v in s.items()} for s in STATES[:2]]
    for method in ("knots", "tsv_m", "iso_c"):
        out = M.compose(method, states, [0.5, 0.5])
        assert list(out) == list(states[0]) and all(v.dtype == torch.float32 for v in out.values())


@pytest.mark.parametrize("call, message", [
    (lambda: M.knots(STATES, WEIGHTS, merge="mean"), "merge must be"),
    (lambda: M.knots(STATES, WEIGHTS, density=0.0), r"density must be in \(0, 1\]"),
    (lambda: M.knots(STATES, WEIGHTS, majority="mode"), "majority"),
    (lambda: M.knots(STATES, [1.0]), "got 1 weights for 3 modules"),
    (lambda: M.tsv_m(STATES, WEIGHTS, task_rank=4), r"task_rank must be in \[1, 3\]"),
    (lambda: M.tsv_m([lora_state(i, d_out=4, d_in=4, r=1) for i in range(5)], [0.2] * 5), "no singular vector"),
    (lambda: M.iso_c(STATES, [1.0, float("inf"), 1.0]), "finite"),
    (lambda: M.svd_of_product(torch.ones(3, 2), torch.ones(3, 4)), "need b"),
])
def test_bad_input_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
