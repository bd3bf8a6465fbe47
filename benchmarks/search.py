"""(7) Selecting λ on held-out rows: the whole grid vs coarse-to-fine (``pemnb.sweep.best_lambda``).

Chapter 01's selection as it runs at ``small`` — its SST-2 modules (s0, s1 from
``distribution.train_modules``, pemnb's cache when it has them), merged θ = λθ₀ + (1 − λ)θ₁ and scored
on the chapter's λ-selection rows with its headline metric — but over a finer grid than ``small``'s
five points (where coarse-to-fine has nothing to save): the ``paper`` profile's 51 points by default.
Both sides use chapter 01's tie rule (``distribution.select_lambda``: closest to 0.5, then smaller);
the check is that they select the same λ.
"""
from __future__ import annotations

import functools
import time

from pemnb import arithmetic, distribution as D
from pemnb import sweep as SW
from pemnb.evaluate import classify, headline_metric
from pemnb.profiles import load_profile

TASK = "sst2"
COARSE_POINTS = (5, 9, 13, 17)


def run(kinds: tuple[str, ...] = ("lora", "ia3", "fft"), grid_step: float = 0.02, eval_rows: int | None = None) -> dict:
    from pemnb.profiles import inclusive_grid

    profile = load_profile("small")
    settings = D.settings(profile)
    if eval_rows is not None:  # --quick
        settings = settings.replace(select_max=eval_rows, eval_max=eval_rows)
    td = D.task_data(TASK, profile, settings)
    grid = inclusive_grid(0.0, 1.0, grid_step)
    metric = headline_metric(TASK)
    prefer = lambda lam: (abs(lam - 0.5), lam)  # distribution.select_lambda's tie rule
    rows = {}
    for kind in kinds:
        bench, modules = D.train_modules(profile, td, kind, settings, progress=False)
        batches = bench.batches(td.select)
        evaluate = functools.partial(classify, batches=batches, task=td.name)
        compose = functools.partial(arithmetic.merge, modules["s0"], modules["s1"], kind=kind)
        t0 = time.perf_counter()
        score = SW.in_place(bench.model, evaluate)
        full = SW.sweep(compose, grid, score, progress=False)
        t1 = time.perf_counter()
        found, _ = SW.best_lambda(compose, grid, score, metric, prefer=prefer)
        t2 = time.perf_counter()
        lam_full = D.select_lambda(full, metric)
        curve = {r["lam"]: float(r[metric]) for r in full}
        # The same search replayed on the measured curve with more coarse points (no new evaluations):
        # how many points a search needs before it stops missing this curve's best λ.
        replay = {}
        for points in COARSE_POINTS:
            again = SW.coarse_to_fine(curve.__getitem__, grid, coarse_points=points, prefer=prefer)
            replay[str(points)] = {"evaluated": again.evaluated, "lam": again.best, "same": again.best == lam_full}
        rows[kind] = {"kind": kind, "grid_points": len(grid), "evaluated": found.evaluated, "lam_full": lam_full,
                      "lam_search": found.best, "same": lam_full == found.best,
                      "best_full": max(r[metric] for r in full), "best_search": found.scores[found.best],
                      "full_s": t1 - t0, "search_s": t2 - t1, "ratio": (t1 - t0) / (t2 - t1),
                      "curve": curve, "replay": replay}
    return {"backbone": profile.encoder, "task": TASK, "metric": metric, "select_rows": len(td.select),
            "grid_step": grid_step, "rows": rows}


if __name__ == "__main__":
    print(run())
