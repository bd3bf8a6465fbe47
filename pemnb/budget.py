"""Learning curves for choosing a training budget: one training run, scored at several step counts.

A budget (steps, learning rate) is chosen by measurement, not by guess: train once towards the largest
step count with its own learning-rate schedule, stop at each checkpoint (``train_module``'s
``stop_after`` resumption), score the live module, and go on. Each point is therefore the module
part-way through *that* schedule — a slightly pessimistic stand-in for a run that ends there, since
its learning rate has not yet decayed.
"""
from __future__ import annotations

import math
import tempfile
import time
from typing import Callable, Sequence

from .train import train_module


def learning_curve(model, examples: Sequence[dict], score: Callable[[object], dict], *, points: Sequence[int],
                   lr: float, batch_size: int, seed: int, pad_token_id: int, desc: str = "curve",
                   progress: bool = False, **train_kwargs) -> list[dict]:
    """Rows {step, loss (mean of the last ten), seconds, **score(model)} at each of `points` (increasing
    step counts; the last is the run's length), from one training run of the module attached to `model`.

    `score(model)` evaluates the live model (e.g. ``lambda m: classify(m, batches, task)``).
    """
    points = sorted(int(p) for p in points)
    if not points or points[0] <= 0 or len(set(points)) != len(points):
        raise ValueError(f"points must be distinct positive step counts, got {points}")
    total, rows, done, losses = points[-1], [], 0, []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pemnb-curve-") as ckpt:
        for point in points:
            result = train_module(model, examples, steps=total, lr=lr, batch_size=batch_size, seed=seed,
                                  pad_token_id=pad_token_id, checkpoint_dir=ckpt,
                                  checkpoint_every=math.gcd(*points), checkpoint_seconds=float("inf"),
                                  stop_after=point - done, desc=desc, progress=progress, **train_kwargs)
            losses = result.losses
            done = result.steps
            if done != point:
                raise RuntimeError(f"expected to stop at step {point}, stopped at {done}")
            tail = losses[-10:]
            rows.append({"step": point, "loss": sum(tail) / len(tail), "seconds": time.perf_counter() - t0,
                         **score(model)})
    return rows


# ---- chapter 01: the fullset module of each task and kind ----------------------------------------

def distribution_curves(profile, settings, *, tasks: Sequence[str], kinds: Sequence[str], points: Sequence[int],
                        lr: dict | None = None, progress: bool = True) -> list[dict]:
    """Learning curves of chapter 01's fullset modules, scored on each task's λ-selection rows (never on
    the evaluation rows the page reports), with what a module that learned nothing scores beside them."""
    import numpy as np

    from . import distribution
    from .classify import ClassifierBench
    from .evaluate import classify, headline_metric
    from .modules import write_state

    rows = []
    for task in tasks:
        td = distribution.task_data(task, profile, settings)
        for kind in kinds:
            bench = ClassifierBench(distribution.chapter_profile(profile, settings), td.name, kind,
                                    progress=False)
            write_state(bench.model, bench.init_state)
            batches = bench.batches(td.select)
            rate = lr.get(kind, bench.profile.lr[kind]) if lr else bench.profile.lr[kind]
            labels = np.asarray(batches.labels)
            reference, reference_is = distribution.reference_score(task, labels)
            metric = headline_metric(task)
            curve = learning_curve(bench.model, bench.examples(td.fullset), lambda m: classify(m, batches, td.name),
                                   points=points, lr=rate, batch_size=bench.profile.batch_size, seed=bench.profile.seed,
                                   pad_token_id=bench.tokenizer.pad_token_id, desc=f"{task} {kind}",
                                   progress=False, autocast_bf16=bench.autocast_bf16, head_lr=bench.head_lr)
            for r in curve:
                rows.append({"task": task, "kind": kind, "lr": rate, "head_lr": bench.head_lr, "metric": metric,
                             "score": r[metric], "reference": reference, "reference is": reference_is, "n_select": len(labels), **r})
                print(f"{task:5s} {kind:4s} lr={rate:g} step {r['step']:4d}  loss {r['loss']:.3f}  "
                      f"{metric} {r[metric]:.3f}  ({reference_is} {reference:.3f})  {r['seconds']:.0f}s", flush=True)
    return rows


def main(argv=None) -> int:
    import argparse
    import json

    from . import distribution
    from .profiles import load_profile

    ap = argparse.ArgumentParser(description="Learning curves for choosing a chapter's training budget.")
    ap.add_argument("chapter", choices=["distribution"])
    ap.add_argument("--tasks", default=None, help="comma-separated (default: the chapter's)")
    ap.add_argument("--kinds", default="lora,ia3,fft")
    ap.add_argument("--points", default="60,120,240")
    ap.add_argument("--lr", default="", help="kind=rate,… overriding the chapter's")
    ap.add_argument("--out", default=None, help="JSON Lines file to append rows to")
    a = ap.parse_args(argv)
    profile = load_profile()
    s = distribution.settings(profile)
    tasks = a.tasks.split(",") if a.tasks else list(s.tasks)
    lr = {k: float(v) for k, v in (x.split("=") for x in a.lr.split(",") if x)}
    rows = distribution_curves(profile, s, tasks=tasks, kinds=a.kinds.split(","),
                               points=[int(x) for x in a.points.split(",")], lr=lr)
    if a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
