"""(4) End to end: a chapter's λ sweep as chapter 01 runs it vs the bare forward passes it cannot avoid.

Chapter side: for every λ of chapter 01's ``small`` grid, ``arithmetic.merge(θ₁, θ₂, λ, "lora")`` then
``ClassifierBench.evaluate`` (write the state in place, forward passes over length-bucketed batches, GLUE
metrics, the result written to pemnb's results cache — a fresh, empty cache folder for every timed
sweep, so nothing is served from it). Floor side: ``EvalBatches.logits`` over the same batches, once per
λ, with nothing else. Their ratio is everything pemnb adds to the forward passes (goal ≤ 1.05×).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from pemnb import arithmetic, data
from pemnb import distribution as D
from pemnb.cache import Cache
from pemnb.classify import ClassifierBench
from pemnb.profiles import load_profile
from pemnb.sweep import sweep

from .common import alternate

TASK, KIND = "glue/sst2", "lora"


def run(n: int = 200, repeat: int = 3) -> dict:
    profile = load_profile("small")
    settings = D.settings(profile)
    grid = tuple(settings.lam_grid)
    scratch = Path(tempfile.mkdtemp(prefix="pemnb-bench-"))
    try:
        bench = ClassifierBench(D.chapter_profile(profile, settings), TASK, KIND, cache=Cache(scratch / "modules"),
                                progress=False)
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        theta1, theta2 = ({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in bench.init_state.items()}
                          for g in gens)
        ds = data.subsample(data.load(TASK, "validation"), n, seed=0)
        batches = bench.batches(ds)
        caches = iter([Cache(scratch / f"results-{i}", namespace="results", code_modules=bench.results.code_modules)
                       for i in range(repeat + 1)])

        def chapter_sweep():
            bench.results = next(caches)  # empty: every evaluation is computed and written
            return sweep(lambda lam: arithmetic.merge(theta1, theta2, lam, KIND), grid, bench.scorer(batches),
                         progress=False)

        def forward_only():
            return [batches.logits(bench.model) for _ in grid]

        t = alternate({"chapter": chapter_sweep, "forward": forward_only}, repeat)
        tokens = sum(int(b["input_ids"].numel()) for b in batches.batches)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"backbone": profile.encoder, "task": TASK, "kind": KIND, "n": n, "grid_points": len(grid),
            "max_length": bench.profile.max_length, "tokens": tokens, "repeat": repeat, "s": t,
            "ratio": t["chapter"] / t["forward"]}


if __name__ == "__main__":
    print(run())
