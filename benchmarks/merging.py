"""(6) TIES per λ point: every point composed from scratch vs the λ-independent work done once per sweep.

Modules shaped like MiniLM-L6's LoRA (12 adapted 384 × 384 layers, r = 8, a 2-class head), random
factors. Per point: ``merge_methods.compose("ties", states, w)`` recomputes every ΔWᵢ = s·BᵢAᵢ and its
top-k trim. Prepared: ``merge_methods.prepare("ties", states)`` computes those once (included in the
timed sweep, spread over the grid); each point then only elects signs and adds. Weights: λ on the first
module and (1 − λ)/(k − 1) on each other one, over an 11-point grid. The results must be equal bit for bit.
"""
from __future__ import annotations

import torch

from pemnb import merge_methods as M

from .common import alternate

LAYERS, WIDTH, RANK, SCALING, DENSITY = 12, 384, 8, 2.0, 0.2


def _states(n: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for seed in range(n):
        g = torch.Generator().manual_seed(seed)
        st = {}
        for i in range(LAYERS):
            st[f"encoder.layer.{i}.lora_A.weight"] = 0.05 * torch.randn(RANK, WIDTH, generator=g)
            st[f"encoder.layer.{i}.lora_B.weight"] = 0.05 * torch.randn(WIDTH, RANK, generator=g)
        st["classifier.weight"] = torch.randn(2, WIDTH, generator=g)
        out.append(st)
    return out


def run(modules: tuple[int, ...] = (2, 8), grid_points: int = 11, repeat: int = 3) -> dict:
    grid = [i / (grid_points - 1) for i in range(grid_points)]
    out = {"layers": LAYERS, "shape": [WIDTH, WIDTH], "rank": RANK, "density": DENSITY, "grid_points": grid_points,
           "repeat": repeat, "rows": {}}
    for k in modules:
        states = _states(k)
        weights = [[lam] + [(1 - lam) / (k - 1)] * (k - 1) for lam in grid]
        per_point = lambda: [M.compose("ties", states, w, scaling=SCALING, density=DENSITY) for w in weights]

        def prepared():
            at = M.prepare("ties", states, scaling=SCALING, density=DENSITY)
            return [at(w) for w in weights]

        a, b = per_point(), prepared()
        equal = all(torch.equal(x.layers[t], y.layers[t]) for x, y in zip(a, b) for t in x.layers) and all(
            torch.equal(x.extras[t], y.extras[t]) for x, y in zip(a, b) for t in x.extras)
        t = alternate({"per_point": per_point, "prepared": prepared}, repeat, warmup=0)
        out["rows"][str(k)] = {"modules": k, "equal": equal, "per_point_s": t["per_point"] / grid_points,
                               "prepared_s": t["prepared"] / grid_points, "ratio": t["per_point"] / t["prepared"]}
    return out


if __name__ == "__main__":
    print(run())
