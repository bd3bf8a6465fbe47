"""sweep.coarse_to_fine / best_lambda: the full grid's argmax with fewer evaluations on unimodal curves."""
import numpy as np
import pytest
import torch

from pemnb import sweep as SW
from pemnb.backbones import load_backbone
from pemnb.modules import attach, read_state

from pemnb.profiles import inclusive_grid


def full_grid_choice(f, grid, prefer=lambda lam: lam):
    best = max(f(x) for x in grid)
    return min((x for x in grid if f(x) == best), key=prefer)


def unimodal_curves(seed, n):
    """Random unimodal curves: a peak anywhere (ends included), asymmetric slopes and powers, some with a
    flat top of random width, on a grid quantised like an accuracy (k/200)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        peak, left, right = rng.uniform(-0.2, 1.2), rng.uniform(0.2, 5), rng.uniform(0.2, 5)
        power, top = rng.uniform(0.5, 3), rng.choice([0.0, rng.uniform(0, 0.3)])

        def f(x, peak=peak, left=left, right=right, power=power, top=top):
            d = max(abs(x - peak) - top, 0.0)
            slope = left if x < peak else right
            return round(200 * (1 - slope * d ** power)) / 200
        yield f


@pytest.mark.parametrize("step", [0.25, 0.1, 0.05, 0.02, 0.01])
def test_finds_the_full_grid_argmax_on_unimodal_curves_with_fewer_points(step):
    grid = inclusive_grid(0.0, 1.0, step)
    counts = []
    for f in unimodal_curves(int(step * 1000), 300):
        found = SW.coarse_to_fine(f, grid)
        assert found.best == full_grid_choice(f, grid)
        assert all(found.scores[x] == f(x) for x in found.scores)
        counts.append(found.evaluated)
    if len(grid) > 5:
        assert max(counts) < len(grid)
    if len(grid) >= 51:
        assert np.mean(counts) < 0.4 * len(grid)


def test_ties_resolve_as_the_full_grid_resolves_them():
    prefer = lambda lam: (abs(lam - 0.5), lam)   # chapter 01's rule: closest to 0.5, then the smaller
    grid = inclusive_grid(0.0, 1.0, 0.05)
    for f in unimodal_curves(7, 300):
        assert SW.coarse_to_fine(f, grid, prefer=prefer).best == full_grid_choice(f, grid, prefer)
    flat = lambda lam: 0.8 if 0.1 <= lam <= 0.4 else 0.5   # flat top left of 0.5: its right edge wins
    assert SW.coarse_to_fine(flat, grid, prefer=prefer).best == 0.4
    assert SW.coarse_to_fine(flat, grid).best == 0.1


def test_a_small_grid_is_scored_whole_and_each_point_once():
    calls = []
    found = SW.coarse_to_fine(lambda lam: calls.append(lam) or -abs(lam - 0.3), [0.0, 0.25, 0.5, 0.75, 1.0])
    assert found.best == 0.25 and sorted(calls) == [0.0, 0.25, 0.5, 0.75, 1.0]
    calls.clear()
    found = SW.coarse_to_fine(lambda lam: calls.append(lam) or -abs(lam - 0.37), inclusive_grid(0.0, 1.0, 0.01))
    assert found.best == 0.37 and len(calls) == len(set(calls)) == found.evaluated < 20


def test_bad_input():
    with pytest.raises(ValueError, match="empty"):
        SW.coarse_to_fine(lambda lam: 0.0, [])
    with pytest.raises(ValueError, match="coarse_points"):
        SW.coarse_to_fine(lambda lam: 0.0, [0.0, 1.0], coarse_points=1)
    with pytest.raises(ValueError, match="NaN"):
        SW.coarse_to_fine(lambda lam: float("nan"), [0.0, 1.0])


def test_best_lambda_on_a_live_model_matches_the_full_sweep_and_restores_the_module():
    torch.manual_seed(0)
    model, _ = load_backbone("smoke-bert", "classification", 2, seed=0, device="cpu")
    model = attach(model, "lora", r=4, alpha=8, init_seed=0)
    before = read_state(model)
    target = {k: torch.randn_like(v) for k, v in before.items()}
    compose = lambda lam: {k: lam * target[k] for k in target}
    # A metric peaked at λ = 0.6 read off the live weights (so it really comes from the written state).
    key = next(iter(target))
    norm = float(target[key].norm())
    evaluate = lambda m: {"score": -abs(float(read_state(m)[key].norm()) / norm - 0.6)}
    grid = inclusive_grid(0.0, 1.0, 0.05)
    with SW.restored(model) as writer:
        score = SW.in_place(model, evaluate, writer)
        full = SW.sweep(compose, grid, score, progress=False)
        found, rows = SW.best_lambda(compose, grid, score, "score")
    assert found.best == max(full, key=lambda r: r["score"])["lam"] == 0.6
    assert len(rows) == found.evaluated < len(grid)
    assert all(torch.equal(read_state(model)[k], before[k]) for k in before)
    with pytest.raises(KeyError, match="accuracy"):
        SW.best_lambda(compose, grid, score, "accuracy")
