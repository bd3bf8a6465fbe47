"""Beyond the paper: the ways to compose two LoRA modules, compared on the modules of chapters 01 and 02.

For two LoRA modules θ₁, θ₂ and a weight λ, each method of :mod:`pemnb.merge_methods` gives a module
meant to act like λΔW₁ + (1−λ)ΔW₂. This module runs them all on the same pairs of trained modules:

- the pairs are the LoRA modules of chapter 01 (s0 and s1 of a GLUE task, MiniLM with a classification
  head) and of chapter 02 (MNLI and RTE, SmolLM2 answering in words), fetched through those chapters'
  own functions and settings, so the cache hands back what those chapters trained;
- every registered method (but those whose update another one's equals, e.g. ``cat``) is swept over λ
  on the live model with :func:`pemnb.sweep.sweep` (LoRA results of rank r written in place; dense
  results, and LoRA results of another rank as their ΔW, added to the base weights and taken off again);
- the composed ΔW is compared with the exact λΔW₁ + (1−λ)ΔW₂ (relative Frobenius error: the paper's
  cross terms, SVD truncation, TIES trimming, DARE's random drops, KnOTS', TSV-M's and Iso-C's changes);
- under the paper's other operators: merge(θ, ⊖θ), merge(θ₁, ⊖θ₂) (evaluated where the modules carry
  no head) and an analogy of three modules (:func:`operator_rows`);
- cost: composition time, rank, size, and whether the result fits the live rank-r adapter;
- bootstrap intervals over the evaluation rows from the per-row predictions (:func:`intervals`);
- :func:`recommend` turns the measured numbers into a choice by a rule stated in its docstring, and
  :func:`facts` gives every number the page's prose quotes.

Which methods exist, their display names, and which settings feed their parameters come from the
registry (:data:`pemnb.merge_methods.METHODS`): a new registered method is swept, costed, keyed and shown
here without a change to this module.
"""
from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import arithmetic, merge_methods, stats, wording
from .cache import TRAINING_CODE, Cache, state_fingerprint
from .profiles import Profile
from .settings import ChapterSettings
from .syntax import presentation

CHAPTER = "merge_methods"
CODE = TRAINING_CODE + ("pemnb.merge_chapter", "pemnb.merge_methods", "pemnb.sweep", "pemnb.evaluate",
                        "pemnb.arithmetic", "pemnb.multitask:answers_of_model")

# Every registered method, in registration order; the swept ones leave out a method whose update equals
# another's exactly (`cat`'s is task_arith's, a tested identity: it only needs an adapter of rank 2r to
# hold it; it stays in the ΔW and cost comparisons).
ALL_METHODS = tuple(merge_methods.METHODS)
SWEPT = tuple(m for m, meth in merge_methods.METHODS.items() if meth.same_update_as is None)
NAMES = {m: meth.display for m, meth in merge_methods.METHODS.items()}

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "distribution_tasks": ("rte",),   # chapter 01 pairs (s0, s1), LoRA, from its settings and cache
        "multitask": True,                # the chapter 02 pair (MNLI, RTE), LoRA
        "multitask_eval_rows": None,      # None: chapter 02's evaluation rows (all of them)
        "lam_grid": (0.0, 0.25, 0.5, 0.75, 1.0),
        "ties_density": 0.2, "dare_drop_rate": 0.5, "dare_seed": 0,
        "tolerance": 0.01,                # recommend(): "as good as the best" = within this many points (×100)
        "cost_repeat": 3,
    },
    "small": {
        # Chapter 01 trained these (MiniLM, 250 evaluation rows each, about a second per evaluation).
        # The SmolLM2 pair is the expensive part: 9 swept methods × 5 λ, plus 9 evaluated subtractions
        # θ_MNLI ⊕ ⊖θ_RTE, = 54 evaluations. A calibration (1 thread, load ≈ 3) scored 32 MNLI prompts in
        # 7.2 s and 32 RTE prompts in 12.3 s, so 48 rows per task cost ≈ 30 s per evaluation there,
        # ≈ 27 min for the 54; less on two quiet threads. Not timed end to end at this profile.
        "distribution_tasks": ("rte", "sst2", "mrpc"),
        "multitask": True,
        "multitask_eval_rows": 48,
        "lam_grid": (0.0, 0.25, 0.5, 0.75, 1.0),
        "ties_density": 0.2, "dare_drop_rate": 0.5, "dare_seed": 0,
        # "As good as the best" must be wider than the noise: an accuracy near 50% on n rows has a
        # standard error of √(0.25/n); over these four scenarios (194, 250 and 250 rows, and the mean of
        # 48 + 48) the mean score's is ≈ 1.9 points, so two of them ≈ 4 points.
        "tolerance": 0.04,
        "cost_repeat": 5,
    },
    "paper": {
        "distribution_tasks": ("cola", "mrpc", "rte", "sst2", "stsb"),
        "multitask": True,
        "multitask_eval_rows": None,
        "lam_grid": tuple(round(i * 0.1, 6) for i in range(11)),
        "ties_density": 0.2, "dare_drop_rate": 0.5, "dare_seed": 0,
        "tolerance": 0.01,
        "cost_repeat": 10,
    },
}


@dataclass(frozen=True)
class Settings(ChapterSettings):
    """Chapter 06's settings (presets above; ``profile.chapter("merge_methods")`` overrides them)."""

    CHAPTER: ClassVar[str] = CHAPTER
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS
    distribution_tasks: tuple[str, ...]  # chapter 01 pairs (s0, s1), LoRA, from its settings and cache
    multitask: bool                      # the chapter 02 pair (MNLI, RTE), LoRA
    multitask_eval_rows: int | None      # None: chapter 02's evaluation rows (all of them)
    lam_grid: tuple[float, ...]
    ties_density: float
    dare_drop_rate: float
    dare_seed: int
    tolerance: float                     # recommend(): "as good as the best" = within this much (score units)
    cost_repeat: int

    def __post_init__(self):
        super().__post_init__()
        if not self.lam_grid or any(not 0.0 <= x <= 1.0 for x in self.lam_grid):
            raise ValueError(f"λ grid must be non-empty and inside [0, 1]: {self.lam_grid}")
        if not any(abs(x - 0.5) < 1e-9 for x in self.lam_grid):
            raise ValueError(f"the λ grid must contain 0.5 (the untuned merge): {self.lam_grid}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be ≥ 0, got {self.tolerance}")


def settings(profile: Profile, **overrides: Any) -> Settings:
    """This chapter's settings at `profile` (an unknown profile, field or type raises)."""
    return Settings.for_profile(profile, **overrides)


# ------------------------------------------------------------------------------------------ compose
def method_kwargs(method: str, settings: Settings, scaling: float) -> dict[str, Any]:
    """The keyword arguments `method` takes at these settings, as its registration declares them (the
    live adapter's scaling α/r, and each parameter fed by a settings field, e.g. TIES' density)."""
    if method not in merge_methods.METHODS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(merge_methods.METHODS)}")
    return merge_methods.METHODS[method].kwargs(settings, scaling)


def method_settings(methods: Sequence[str] = ALL_METHODS) -> tuple[str, ...]:
    """The settings fields the registered `methods` read (what their results depend on)."""
    fields = [p.setting for m in methods for p in merge_methods.METHODS[m].params
              if p.setting not in (None, merge_methods.ADAPTER)]
    return tuple(dict.fromkeys(fields))


def method_parameters(settings: Settings, methods: Sequence[str] = ALL_METHODS) -> dict[str, str]:
    """{display name: the parameters it runs with at these settings} for every method that has any (the
    LoRA scaling, which comes from the adapter, left out): what a page's provenance table shows."""
    out = {}
    for m in methods:
        meth = merge_methods.METHODS[m]
        given = meth.kwargs(settings, scaling=1.0)
        shown = [f"{p.name}: {p.doc}" if given.get(p.name, p.default) is None and p.doc else
                 f"{p.name} {given.get(p.name, p.default)!r}" + (f" ({p.setting})" if p.name in given else "")
                 for p in meth.params if p.setting != merge_methods.ADAPTER]
        if shown:
            out[meth.display] = ", ".join(shown)
    return out


def compose_pair(method: str, theta1, theta2, lam: float, settings: Settings, scaling: float):
    """method(θ₁, θ₂) with weights (λ, 1−λ): a LoRA state or a DenseDelta."""
    return merge_methods.compose(method, [theta1, theta2], [lam, 1.0 - lam], **method_kwargs(method, settings, scaling))


def on_live_adapter(composed, rank: int, scaling: float):
    """What the live rank-r adapter is given for a composition result: a LoRA state of rank r as it is
    (written in place); a LoRA state of another rank (cat, KnOTS, TSV-M, Iso-C: rank 2r) as its dense
    ΔW = s·B·A on the base weights — exactly what an adapter of that rank computes (tested), without
    building one per λ; a DenseDelta as it is."""
    if isinstance(composed, merge_methods.DenseDelta) or merge_methods.rank_of(composed) == rank:
        return composed
    return merge_methods.dense(composed, scaling)


def composed_delta(composed, scaling: float) -> dict[str, torch.Tensor]:
    """{layer: ΔW} of a composition result (LoRA factors multiplied out, or a DenseDelta's layers)."""
    if isinstance(composed, merge_methods.DenseDelta):
        return {t: dw.float() for t, dw in composed.layers.items()}
    return arithmetic.delta_weights(composed, scaling)


def delta_error(method: str, theta1, theta2, lam: float, settings: Settings, scaling: float) -> float:
    """‖ΔW_method − (λΔW₁ + (1−λ)ΔW₂)‖_F / ‖λΔW₁ + (1−λ)ΔW₂‖_F over all layers together.

    For 'paper' this is :func:`pemnb.arithmetic.cross_term_error`: the weight of the cross terms.
    """
    return composition_error(method, [theta1, theta2], [lam, 1.0 - lam], settings, scaling)


def composition_error(method: str, states: Sequence, weights: Sequence[float], settings: Settings,
                      scaling: float) -> float:
    """‖ΔW_method(states, weights) − Σ wᵢΔWᵢ‖_F / ‖Σ wᵢΔWᵢ‖_F over all layers together (the ΔWᵢ of the
    states as given: a negated module ⊖θ counts with its update −ΔW)."""
    deltas = [arithmetic.delta_weights(s, scaling) for s in states]
    exact = {t: sum(w * d[t] for w, d in zip(weights, deltas)) for t in deltas[0]}
    got = composed_delta(merge_methods.compose(method, list(states), list(weights),
                                               **method_kwargs(method, settings, scaling)), scaling)
    return arithmetic.relative_error(got, exact)


def factor_difference(theta1, theta2, factor: str = "A") -> float:
    """‖F₁ − F₂‖_F / ‖(F₁ + F₂)/2‖_F over all layers for the LoRA factor F ∈ {A, B}: how far two modules'
    factors are apart. With A₁ = A₂ the paper's addition is exactly the weighted sum of the updates."""
    if factor not in ("A", "B"):
        raise ValueError(f"factor must be 'A' or 'B', got {factor!r}")
    p1, p2 = arithmetic.lora_pairs(theta1), arithmetic.lora_pairs(theta2)
    i = 0 if factor == "A" else 1
    num = sum(float((p1[t][i].double() - p2[t][i].double()).pow(2).sum()) for t in p1)
    den = sum(float(((p1[t][i].double() + p2[t][i].double()) / 2).pow(2).sum()) for t in p1)
    return math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)


def delta_error_rows(theta1, theta2, grid: Iterable[float], settings: Settings, scaling: float,
                     methods: Sequence[str] = ALL_METHODS, **labels) -> list[dict]:
    """Rows {**labels, method, lam, error} of :func:`delta_error` over a λ grid."""
    return [{**labels, "method": m, "lam": float(lam),
             "error": delta_error(m, theta1, theta2, float(lam), settings, scaling)}
            for m in methods for lam in grid]


# ------------------------------------------------------------------------------------------ scenarios
@dataclass
class Scenario:
    """A pair of trained LoRA modules on a live model, with the evaluation that scores a composition.

    evaluate(model) → {metric: value, …, "predictions": per-row predictions}; `score` names the metric the
    chapter ranks by (higher is better). `labels` and `groups` are the evaluation rows' labels and
    groups (chapter 02's pair: which task a row belongs to), aligned with the predictions, so a score's
    bootstrap interval needs no further forward pass (:func:`score_statistic`). `third`: a third module
    of the same model for the analogy check (chapter 01's fullset module), or None.
    """

    name: str
    source: str
    model: Any
    theta1: dict
    theta2: dict
    scaling: float
    evaluate: Callable[[Any], Mapping[str, Any]]
    score: str
    ends: tuple[str, str]
    key: dict = field(default_factory=dict)
    note: str = ""
    labels: Sequence = ()
    groups: Sequence = ()
    metric: str = "accuracy"
    third: dict | None = None
    group_names: tuple[str, ...] = ("all rows",)
    backbone: str = ""

    @property
    def rank(self) -> int:
        return merge_methods.rank_of(self.theta1)


def _classifier_metrics(model, batches, task: str) -> dict[str, Any]:
    from .evaluate import classify

    return classify(model, batches, task, with_predictions=True)


def distribution_scenarios(profile: Profile, settings: Settings, *, progress: bool = True):
    """Chapter 01's LoRA pairs (s0, s1) for the tasks in ``settings.distribution_tasks``, one at a time.

    The modules come from :func:`pemnb.distribution.train_modules` with chapter 01's settings at this
    profile (a cache hit when chapter 01 ran first); scored on chapter 01's evaluation part. The fullset
    module is the third module of the analogy check.
    """
    from . import distribution
    from .cache import fingerprint
    from .evaluate import headline_metric

    ds = distribution.settings(profile)
    for task in settings.distribution_tasks:
        if task not in ds.tasks:
            continue
        try:
            td = distribution.task_data(task, profile, ds)
        except distribution.TaskSkipped:
            continue
        bench, mods = distribution.train_modules(profile, td, "lora", ds, progress=progress)
        batches = bench.batches(td.evalset)
        metric = headline_metric(task)
        yield Scenario(
            name=f"{task.upper()}: s0 + s1", source="chapter 01 (distribution)", model=bench.model,
            theta1=mods["s0"], theta2=mods["s1"], scaling=bench.scaling(),
            evaluate=functools.partial(_classifier_metrics, batches=batches, task=td.name), score=metric,
            ends=("s1 alone", "s0 alone"),
            key={"task": task, "encoder": bench.profile.encoder, "eval": fingerprint(td.evalset),
                 "theta1": state_fingerprint(mods["s0"]), "theta2": state_fingerprint(mods["s1"]),
                 "third": state_fingerprint(mods["fullset"])},
            note=f"{bench.profile.encoder}, {len(td.evalset)} evaluation rows, {metric}",
            labels=np.asarray(batches.labels).tolist(), groups=[0] * len(batches.labels), metric=metric,
            third=mods["fullset"], backbone=bench.profile.encoder)


def _answer_accuracy(model, tokenizer, evalsets, batch_size: int) -> dict[str, Any]:
    from .multitask import answers_of_model  # chapter 02's one scorer, on the state the sweep wrote

    out, predictions = {}, []
    for t, es in evalsets.items():
        answered = answers_of_model(model, tokenizer, es, batch_size)
        out[t] = answered["accuracy"]
        predictions += answered["predictions"]
    out["mean"] = float(np.mean(list(out.values())))
    out["predictions"] = predictions  # the tasks' rows one after the other, as Scenario.labels
    return out


def multitask_scenario(profile: Profile, settings: Settings, *, progress: bool = True) -> Scenario:
    """Chapter 02's LoRA pair (θ_MNLI, θ_RTE), from its functions and settings at this profile (a cache
    hit when chapter 02 ran first), scored by one-pass answer scoring on its evaluation rows (the
    first ``multitask_eval_rows`` of each task); `score` is the mean accuracy of the two tasks."""
    from . import multitask

    ms = multitask.settings(profile)
    tasks = {t: multitask.load_task(t, ms, seed=profile.seed) for t in multitask.TASKS}
    bench = multitask.make_bench(profile, "lora", ms, cache=Cache(), progress=progress)
    fmt = multitask.prompt_format(bench, ms)
    modules, _ = multitask.task_modules(bench, tasks, fmt, ms)
    n = settings.multitask_eval_rows
    evalsets = {t: multitask.EvalSet(t, d.eval if n is None else d.eval.select(range(min(n, len(d.eval)))), fmt,
                              bench.tokenizer) for t, d in tasks.items()}
    return Scenario(
        name="MNLI + RTE", source="chapter 02 (multitask)", model=bench.model,
        theta1=modules["mnli"], theta2=modules["rte"], scaling=bench.scaling(),
        evaluate=functools.partial(_answer_accuracy, tokenizer=bench.tokenizer, evalsets=evalsets,
                                   batch_size=int(ms.eval_batch)),
        score="mean", ends=("RTE module alone", "MNLI module alone"),
        key={"backbone": ms.backbone, "eval": {t: es.fingerprint for t, es in evalsets.items()},
             "theta1": state_fingerprint(modules["mnli"]), "theta2": state_fingerprint(modules["rte"])},
        note=f"{ms.backbone}, {' + '.join(f'{len(es)} {t.upper()}' for t, es in evalsets.items())} "
             "evaluation rows, mean accuracy",
        labels=[int(y) for es in evalsets.values() for y in es.labels],
        groups=[i for i, es in enumerate(evalsets.values()) for _ in range(len(es))], metric="accuracy",
        group_names=tuple(t.upper() for t in evalsets), backbone=ms.backbone)


# ------------------------------------------------------------------------------------------ sweeps
def method_sweep(scenario: Scenario, settings: Settings, methods: Sequence[str] = SWEPT, *,
                 progress: bool = True) -> list[dict]:
    """Rows {scenario, method, lam, metrics…, predictions, score, compose_s, eval_s}: every method swept
    over λ on the scenario's live model with :func:`pemnb.sweep.sweep` (the model's module is restored
    after; a result of another rank is applied as its ΔW, :func:`on_live_adapter`)."""
    from .sweep import in_place, restored, sweep

    rows = []
    with restored(scenario.model) as writer:
        score = in_place(scenario.model, scenario.evaluate, writer)
        for m in methods:
            # What does not depend on λ (ΔWᵢ, TIES' trims, DARE's masks, KnOTS' and TSV-M's SVDs) is
            # computed once per method, not per point.
            at = merge_methods.prepare(m, [scenario.theta1, scenario.theta2],
                                       **method_kwargs(m, settings, scenario.scaling))
            compose = functools.partial(_compose_prepared, at, scenario.rank, scenario.scaling)
            for r in sweep(compose, settings.lam_grid, score, progress=progress, desc=f"{scenario.name} · {m}",
                           timings=True):
                rows.append({"scenario": scenario.name, "method": m, **r, "score": float(r[scenario.score])})
    return rows


def _compose_prepared(at, rank, scaling, lam):
    # at([λ, 1−λ]) equals compose_pair(method, θ₁, θ₂, λ, …) bit for bit (tested)
    return on_live_adapter(at([lam, 1.0 - lam]), rank, scaling)


# ------------------------------------------------------------------------------- negation and analogy
def negated(state) -> dict:
    """⊖θ as chapter 04's analogy (the official analogy.py) negates a LoRA module: B ← −B, so ΔW → −ΔW."""
    return arithmetic.negate(state, "lora", factor="B")


def operator_rows(scenario: Scenario, settings: Settings, methods: Sequence[str] = SWEPT, *,
                  evaluate: bool = True) -> list[dict]:
    """How each method's merge behaves under the paper's other two operators, on the scenario's modules.

    - ``cancel``: merge(θ₁, ⊖θ₁) with weights (1, 1), whose exact update is zero: ‖ΔW‖ / ‖ΔW₁‖;
    - ``subtract``: merge(θ₁, ⊖θ₂) with weights (1, 1) against ΔW₁ − ΔW₂ (relative error); with
      `evaluate`, and when the modules carry no head (a head would be summed, not negated), also its
      metrics and per-row predictions on the live model: does it remove what θ₂ taught?
    - ``analogy`` (when the scenario has a third module θ₃): merge(θ₃, θ₂, ⊖θ₁) with weights
      (½, ½, ½) — the form of chapter 04's analogy λθ₃ ⊕ (1−λ)(θ₂ ⊖ θ₁) at λ = ½ — against its exact update;
      with `evaluate` also its metrics and predictions, to compare with the exact analogy's (every method
      combines a head the same way, Σ wᵢhᵢ, so that comparison is not confounded by the head).
    Rows {scenario, method, check, error, and for evaluated rows metrics…, predictions}.
    """
    from .sweep import apply_and_evaluate, restored

    t1, t2 = scenario.theta1, scenario.theta2
    has_head = any(arithmetic.role(k) == "other" for k in t1)
    rows = []
    size1 = arithmetic.norms(arithmetic.delta_weights(t1, scenario.scaling))
    with restored(scenario.model) as writer:
        for m in methods:
            kw = method_kwargs(m, settings, scenario.scaling)
            gone = composed_delta(merge_methods.compose(m, [t1, negated(t1)], [1.0, 1.0], **kw), scenario.scaling)
            rows.append({"scenario": scenario.name, "method": m, "check": "cancel",
                         "error": arithmetic.norms(gone) / size1})
            row = {"scenario": scenario.name, "method": m, "check": "subtract",
                   "error": composition_error(m, [t1, negated(t2)], [1.0, 1.0], settings, scenario.scaling)}
            if evaluate and not has_head:
                composed = merge_methods.compose(m, [t1, negated(t2)], [1.0, 1.0], **kw)
                row.update(apply_and_evaluate(scenario.model, on_live_adapter(composed, scenario.rank,
                                                                              scenario.scaling),
                                              scenario.evaluate, writer=writer))
            rows.append(row)
            if scenario.third is not None:
                trio = [scenario.third, t2, negated(t1)]
                row = {"scenario": scenario.name, "method": m, "check": "analogy",
                       "error": composition_error(m, trio, [0.5, 0.5, 0.5], settings, scenario.scaling)}
                if evaluate:  # compared with the exact analogy, whose head is combined the same way
                    composed = merge_methods.compose(m, trio, [0.5, 0.5, 0.5], **kw)
                    row.update(apply_and_evaluate(scenario.model, on_live_adapter(composed, scenario.rank,
                                                                                  scenario.scaling),
                                                  scenario.evaluate, writer=writer))
                rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ cost
def numerical_rank(matrix: torch.Tensor) -> int:
    """Rank of a matrix up to its own dtype's precision: singular values above ``max(shape)·eps·σ_max``
    (float32 ΔW products carry float32 rounding, which a float64 rank would count)."""
    eps = torch.finfo(matrix.dtype).eps if matrix.is_floating_point() else torch.finfo(torch.float32).eps
    sv = torch.linalg.svdvals(matrix.double())
    return int((sv > max(matrix.shape) * eps * sv.max()).sum()) if sv.numel() and sv.max() > 0 else 0


def _median_s(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _nbytes(composed) -> int:
    tensors = (list(composed.layers.values()) + list(composed.extras.values())
               if isinstance(composed, merge_methods.DenseDelta) else list(composed.values()))
    return sum(t.numel() * t.element_size() for t in tensors)


def cost_rows(scenario: Scenario, settings: Settings, methods: Sequence[str] = ALL_METHODS) -> list[dict]:
    """Rows {scenario, method, returns, rank, fits_live_adapter, size_mib, compose_ms, apply_ms} at λ = 0.5.

    compose_ms: median time of the composition alone. apply_ms: putting the result into the live model
    and taking it off again without evaluating (write the state; or add ΔW to the base weights and
    restore them — also for a LoRA result of another rank, as the sweep applies it). size_mib: the
    composed module's tensors. rank: of a LoRA result (the number of rows of A); for a dense ΔW the
    largest numerical rank over the layers.
    """
    from .sweep import StateWriter, delta_applied

    repeat = int(settings.cost_repeat)
    r = scenario.rank
    writer = StateWriter(scenario.model)
    before = writer.snapshot()
    rows = []
    try:
        for m in methods:
            fn = functools.partial(compose_pair, m, scenario.theta1, scenario.theta2, 0.5, settings, scenario.scaling)
            composed = fn()
            is_dense = isinstance(composed, merge_methods.DenseDelta)
            if is_dense:
                rank = max(numerical_rank(dw) for dw in composed.layers.values())
            else:
                rank = merge_methods.rank_of(composed)
            fits = (not is_dense) and rank == r
            if fits:
                apply = functools.partial(writer, composed)
            else:
                def apply(c=on_live_adapter(composed, r, scenario.scaling)):
                    with delta_applied(scenario.model, c):
                        pass
            rows.append({"scenario": scenario.name, "method": m, "returns": "dense ΔW" if is_dense else "LoRA",
                         "rank": rank, "fits_live_adapter": bool(fits), "size_mib": _nbytes(composed) / 2 ** 20,
                         "compose_ms": 1e3 * _median_s(fn, repeat), "apply_ms": 1e3 * _median_s(apply, repeat)})
    finally:
        writer.restore(before)
    return rows


# ------------------------------------------------------------------------------------------ the chapter
@dataclass
class ChapterResult:
    sweep: pd.DataFrame          # one row per scenario, method and λ (with each row's predictions)
    errors: pd.DataFrame         # ΔW error against the exact weighted sum, per scenario, method and λ
    costs: pd.DataFrame          # rank, size and time per scenario and method, at λ = 0.5
    scenarios: pd.DataFrame      # the pairs, indexed by scenario
    operators: pd.DataFrame = field(default_factory=pd.DataFrame)  # negation and analogy checks
    rows: dict = field(default_factory=dict)  # per scenario: {labels, groups, metric} of its evaluation rows
    seconds: float = 0.0
    tolerance: float = 0.0       # recommend()'s, from the settings

    @functools.cached_property
    def score_intervals(self) -> pd.DataFrame:
        """:func:`intervals` of this result (computed once)."""
        return intervals(self)


def run_scenario(scenario: Scenario, settings: Settings, *, cache: Cache | None = None,
                 progress: bool = True) -> dict:
    """Sweep rows, ΔW-error rows, operator rows and cost rows of one scenario; cached by the modules'
    and evaluation data's fingerprints, the methods, the settings they read (as registered), the grid
    and this code."""
    cache = cache if cache is not None else Cache(namespace="results", code_modules=CODE)
    keys = ("lam_grid", "cost_repeat", *method_settings())
    parts = {"what": "merge-methods-scenario", "scenario": scenario.name, **scenario.key,
             "methods": list(ALL_METHODS), **{k: v for k, v in settings.as_dict().items() if k in keys}}

    def compute() -> dict:
        t0 = time.perf_counter()
        sweep_rows = method_sweep(scenario, settings, progress=progress)
        errs = delta_error_rows(scenario.theta1, scenario.theta2, settings.lam_grid, settings,
                                scenario.scaling, scenario=scenario.name)
        ops = operator_rows(scenario, settings)
        costs = cost_rows(scenario, settings)
        return {"sweep": sweep_rows, "errors": errs, "operators": ops, "costs": costs,
                "seconds": time.perf_counter() - t0}

    return cache.result(parts, compute)


def run_chapter(profile: Profile, settings: Settings | None = None, *, cache: Cache | None = None,
                progress: bool = True) -> ChapterResult:
    """Every scenario of the chapter: chapter 01's pairs, then chapter 02's, each loaded, swept and
    released before the next (one backbone in memory at a time)."""
    import gc

    from .backbones import torch_threads

    settings = settings if settings is not None else Settings.for_profile(profile)
    t0 = time.perf_counter()
    sweep, errors, costs, ops, info, rows = [], [], [], [], [], {}

    def scenarios():
        yield from distribution_scenarios(profile, settings, progress=progress)
        if settings.multitask:
            yield multitask_scenario(profile, settings, progress=progress)

    with torch_threads(1 if profile.encoder.startswith("smoke") else None):
        for sc in scenarios():
            out = run_scenario(sc, settings, cache=cache, progress=progress)
            sweep += out["sweep"]
            errors += out["errors"]
            costs += out["costs"]
            ops += out["operators"]
            rows[sc.name] = {"labels": list(sc.labels), "groups": list(sc.groups), "metric": sc.metric,
                             "group_names": list(sc.group_names), "ends": list(sc.ends), "backbone": sc.backbone}
            info.append({"scenario": sc.name, "from": sc.source, "model and evaluation": sc.note,
                         "LoRA rank r": sc.rank, "scaling α/r": sc.scaling,
                         "‖A₁−A₂‖ / ‖A‖": factor_difference(sc.theta1, sc.theta2, "A"),
                         "‖B₁−B₂‖ / ‖B‖": factor_difference(sc.theta1, sc.theta2, "B"),
                         "λ = 0 / λ = 1": f"{sc.ends[0]} / {sc.ends[1]}",
                         "minutes (when computed)": out["seconds"] / 60})
            del sc
            gc.collect()
    if not info:
        raise ValueError("no scenario ran: no chapter 01 task of these settings is available and multitask is off")
    return ChapterResult(pd.DataFrame(sweep), pd.DataFrame(errors), pd.DataFrame(costs),
                         pd.DataFrame(info).set_index("scenario"), pd.DataFrame(ops), rows,
                         time.perf_counter() - t0, float(settings.tolerance))


# ------------------------------------------------------------------------------------------ summaries
def quality(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per scenario and method: score at λ = 0.5 (untuned) and the best score over the grid (each method
    with its own best λ, equally optimistic for all), with that λ."""
    if sweep.empty:
        raise ValueError("no sweep rows")
    rows = []
    for (sc, m), g in sweep.groupby(["scenario", "method"], sort=False):
        half = g.loc[(g["lam"] - 0.5).abs().idxmin()]
        best = g.loc[g["score"].idxmax()]
        rows.append({"scenario": sc, "method": m, "score at λ=0.5": float(half["score"]),
                     "best score": float(best["score"]), "best λ": float(best["lam"])})
    return pd.DataFrame(rows)


def summary(sweep: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """One row per method: mean over scenarios of the score at λ = 0.5 and of the best score, and its
    costs (median over scenarios of compose and apply time; whether it fits the live adapter)."""
    q = quality(sweep).groupby("method", sort=False)[["score at λ=0.5", "best score"]].mean()
    c = costs.groupby("method", sort=False).agg(returns=("returns", "first"), rank=("rank", "max"),
                                                fits_live_adapter=("fits_live_adapter", "all"),
                                                size_mib=("size_mib", "max"), compose_ms=("compose_ms", "median"),
                                                apply_ms=("apply_ms", "median"))
    out = c.join(q, how="left")
    return out.loc[[m for m in ALL_METHODS if m in out.index]]


def recommend(table: pd.DataFrame, tolerance: float, by: str = "score at λ=0.5") -> dict[str, Any]:
    """The method to use, by this rule:

    1. quality = the mean over scenarios of `by` (default: the score at λ = 0.5, the merge that needs no
       tuning data); methods without a score (not swept) are left out;
    2. "as good as the best" = quality within `tolerance` of the highest quality;
    3. among those, prefer a result that fits the live rank-r adapter (no new adapter, no dense ΔW kept
       beside the base weights), then the smaller rank, then the smaller composed module, then the
       earlier method in the registry (the paper's addition first; an unregistered name after, by name)
       — deterministic properties of the methods, never a measured time, so the pick does not move with
       the noise of a clock.

    Returns {method, quality, best_method, best_quality, candidates, rule}.
    """
    t = table.dropna(subset=[by])
    if t.empty:
        raise ValueError("no method has a score")
    best = float(t[by].max())
    best_method = str(t.index[t[by].to_numpy() == best][0])
    cands = t[t[by] >= best - tolerance - 1e-12].copy()
    order = {m: i for i, m in enumerate(ALL_METHODS)}  # the registry's order: the paper's addition first
    cands["_order"] = [order.get(str(m), len(order)) for m in cands.index]
    cands["_name"] = cands.index.astype(str)
    cands = cands.sort_values(["fits_live_adapter", "rank", "size_mib", "_order", "_name"],
                              ascending=[False, True, True, True, True], kind="mergesort")
    pick = str(cands.index[0])
    return {"method": pick, "quality": float(t.loc[pick, by]), "best_method": best_method, "best_quality": best,
            "candidates": list(map(str, cands.index)), "tolerance": float(tolerance), "by": by,
            "rule": (f"among the methods whose mean {by} is within {tolerance * 100:g} points of the best, "
                     "take one whose result fits the live rank-r adapter, then the smallest rank, then the "
                     "smallest module, then the first in the registry (the paper's addition first)")}


# ------------------------------------------------------------------------------------ intervals
def score_statistic(metric: str) -> Callable[..., float]:
    """The statistic a scenario's score is, as a function of (predictions, labels, groups): `metric`
    within each group of rows, averaged over the groups — the metric itself for one group, the mean
    accuracy of MNLI and RTE for chapter 02's pair."""
    return functools.partial(_grouped, stats.metric(metric))


def _grouped(fn, predictions, labels, groups) -> float:
    values = [fn(predictions[groups == g], labels[groups == g]) for g in np.unique(groups)]
    return float(np.mean(values))


def _resampling(ev: Mapping[str, Any]):
    """(values(predictions), columns, statistic) for a scenario's bootstrap: its score is
    ``statistic(values(predictions), *columns)``."""
    labels, groups = np.asarray(ev["labels"]), np.asarray(ev["groups"])
    if ev["metric"] == "accuracy" and len(set(np.unique(groups, return_counts=True)[1])) == 1:
        # Groups of equal size: the mean of their accuracies is the accuracy over all rows, resampled as
        # a plain mean of per-row correctness (vectorised; unequal groups take the grouped statistic).
        return (lambda pred: (np.asarray(pred) == labels).astype(np.float64)), (), np.mean
    return (lambda pred: np.asarray(pred)), (labels, groups), score_statistic(ev["metric"])


def intervals(result: ChapterResult, *, against: str = "paper", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per scenario, method and λ: the score with its bootstrap interval over the evaluation rows
    (``score_low``, ``score_high``) and the paired difference from `against` at the same λ
    (``diff``, ``diff_low``, ``diff_high``, ``diff_real``: the interval excludes 0). No forward pass:
    the per-row predictions of the sweep are resampled (the same draws for every row)."""
    if "predictions" not in result.sweep:
        raise ValueError("the sweep rows carry no per-row predictions")
    out = []
    for sc, g in result.sweep.groupby("scenario", sort=False):
        values, columns, statistic = _resampling(result.rows[sc])
        ref = {float(r["lam"]): values(np.asarray(r["predictions"])) for _, r in g[g["method"] == against].iterrows()}
        for _, r in g.iterrows():
            pred = values(np.asarray(r["predictions"]))
            ci = stats.bootstrap_ci(pred, *columns, statistic=statistic, n_boot=n_boot, seed=seed)
            row = {"scenario": sc, "method": r["method"], "lam": float(r["lam"]), "score": float(r["score"]),
                   "score_low": ci.low, "score_high": ci.high}
            if float(r["lam"]) in ref:
                d = stats.paired_diff_ci(pred, ref[float(r["lam"])], *columns, statistic=statistic,
                                         n_boot=n_boot, seed=seed)
                row.update(diff=d.estimate, diff_low=d.low, diff_high=d.high, diff_real=stats.is_real(d))
            out.append(row)
    return pd.DataFrame(out)


def against_paper(ci_rows: pd.DataFrame, lam: float = 0.5) -> pd.DataFrame:
    """The table of each method against the paper's addition at λ (default ½): per scenario and method
    the score [interval] and the difference from the paper's [interval], and whether it is real."""
    half = ci_rows[(ci_rows["lam"] - lam).abs() < 1e-9]
    return half[["scenario", "method", "score", "score_low", "score_high", "diff", "diff_low", "diff_high",
                 "diff_real"]].reset_index(drop=True)


def subtraction_intervals(result: ChapterResult, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """For the evaluated subtraction rows (merge(θ₁, ⊖θ₂), scenarios without a head): per group of
    rows (task) the accuracy change from θ₁ alone (the exact methods' λ = 1 point) with its paired
    interval — does the merge remove what θ₂ taught (its task falls) and keep θ₁'s (its task holds)?"""
    ops = result.operators
    if ops.empty or "predictions" not in ops:
        return pd.DataFrame()
    out = []
    for _, r in ops[(ops["check"] == "subtract") & ops["predictions"].notna()].iterrows():
        sc = r["scenario"]
        ev = result.rows[sc]
        labels, groups = np.asarray(ev["labels"]), np.asarray(ev["groups"])
        alone = result.sweep[(result.sweep["scenario"] == sc) & (result.sweep["method"] == "task_arith")
                             & ((result.sweep["lam"] - 1.0).abs() < 1e-9)]
        if alone.empty:
            continue
        base = np.asarray(alone.iloc[0]["predictions"])
        pred = np.asarray(r["predictions"])
        for g in np.unique(groups):
            mask = groups == g
            d = stats.paired_diff_ci(pred[mask], base[mask], labels[mask], statistic=stats.accuracy, n_boot=n_boot,
                                     seed=seed)
            out.append({"scenario": sc, "method": r["method"], "rows": f"{ev['group_names'][int(g)]} accuracy",
                        "group": int(g), "change": d.estimate, "change_low": d.low,
                        "change_high": d.high, "real": stats.is_real(d)})
    return pd.DataFrame(out)


def analogy_intervals(result: ChapterResult, *, exact: str = "task_arith", n_boot: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """For the evaluated analogy rows: per scenario and method the score of the merged analogy with its
    interval, and its paired difference from the exact analogy's (`exact`: the sum of updates) — does
    the analogy survive the method's merge?"""
    ops = result.operators
    if ops.empty or "predictions" not in ops:
        return pd.DataFrame()
    rows = ops[(ops["check"] == "analogy") & ops["predictions"].notna()]
    out = []
    for sc, g in rows.groupby("scenario", sort=False):
        values, columns, statistic = _resampling(result.rows[sc])
        ref = g[g["method"] == exact]
        if ref.empty:
            continue
        base = values(ref.iloc[0]["predictions"])
        for _, r in g.iterrows():
            pred = values(r["predictions"])
            ci = stats.bootstrap_ci(pred, *columns, statistic=statistic, n_boot=n_boot, seed=seed)
            d = stats.paired_diff_ci(pred, base, *columns, statistic=statistic, n_boot=n_boot, seed=seed)
            out.append({"scenario": sc, "method": r["method"], "score": ci.estimate, "score_low": ci.low,
                        "score_high": ci.high, "diff": d.estimate, "diff_low": d.low, "diff_high": d.high,
                        "diff_real": stats.is_real(d)})
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------------------ facts
def facts(result: ChapterResult, *, n_boot: int = 1000) -> dict[str, Any]:
    """Every number and result-dependent word the chapter's prose quotes, as one flat mapping (glued in
    a loop; also the run's facts in ``results/<profile>/06_merge_methods.json``)."""
    out: dict[str, Any] = {}
    err = result.errors[(result.errors["lam"] - 0.5).abs() < 1e-9]
    for m, g in err.groupby("method", sort=False):
        out[f"err_{m}_max"], out[f"err_{m}_min"] = float(g["error"].max()), float(g["error"].min())
    for col, name in (("‖A₁−A₂‖ / ‖A‖", "a_diff"), ("‖B₁−B₂‖ / ‖B‖", "b_diff")):
        out[f"{name}_min"], out[f"{name}_max"] = float(result.scenarios[col].min()), float(result.scenarios[col].max())
    out["paper_cross_terms"] = wording.grade(out["err_paper_max"], [(0.02, "negligible"), (0.1, "small"),
                                                                    (0.3, "sizeable")], "large")
    table = summary(result.sweep, result.costs)
    for m in table.index:
        if not np.isnan(table.loc[m, "score at λ=0.5"]):
            out[f"half_{m}"] = float(table.loc[m, "score at λ=0.5"])
            out[f"best_{m}"] = float(table.loc[m, "best score"])
        out[f"rank_{m}"] = int(table.loc[m, "rank"])
        out[f"compose_{m}"] = float(table.loc[m, "compose_ms"])
        out[f"apply_{m}"] = float(table.loc[m, "apply_ms"])
    out["paper_vs_exact"] = out["half_paper"] - out["half_task_arith"]
    out["size_ratio"] = float(table.loc["task_arith", "size_mib"] / table.loc["paper", "size_mib"])
    rec = recommend(table, result.tolerance)
    shown = lambda m: merge_methods.METHODS[m].display  # noqa: E731
    out.update(rec_method=shown(rec["method"]), rec_quality=rec["quality"], rec_best_method=shown(rec["best_method"]),
               rec_best_quality=rec["best_quality"], rec_tolerance=rec["tolerance"],
               rec_candidates=", ".join(shown(m) for m in rec["candidates"]))
    # each method against the paper's addition at λ = ½, on every pair: how often the difference is real
    comp = against_paper(result.score_intervals)
    n_pairs = comp["scenario"].nunique()
    out["n_pairs"] = int(n_pairs)
    for m, g in comp[comp["method"] != "paper"].groupby("method", sort=False):
        up, down = int((g["diff_real"] & (g["diff"] > 0)).sum()), int((g["diff_real"] & (g["diff"] < 0)).sum())
        out[f"above_paper_{m}"], out[f"below_paper_{m}"] = up, down
        out[f"vs_paper_{m}"] = (f"above the paper's addition on {wording.count_phrase(up, n_pairs, 'pair')}, "
                                f"below it on {wording.count_phrase(down, n_pairs, 'pair')}"
                                if up or down else f"indistinguishable from the paper's addition on "
                                                   f"{wording.count_phrase(n_pairs, n_pairs, 'pair')}")
    # negation and analogy
    ops = result.operators
    for check in ("cancel", "subtract", "analogy"):
        part = ops[ops["check"] == check] if not ops.empty else ops
        for m, g in (part.groupby("method", sort=False) if not part.empty else []):
            out[f"{check}_{m}"] = float(g["error"].max())
    exact_cancel = [m for m in SWEPT if f"cancel_{m}" in out and out[f"cancel_{m}"] < 1e-3]
    out["cancel_exact"] = ", ".join(shown(m) for m in exact_cancel) or "none"
    out["cancel_inexact"] = ", ".join(shown(m) for m in SWEPT if f"cancel_{m}" in out and m not in exact_cancel) or "none"
    sub = subtraction_intervals(result, n_boot=n_boot)
    if not sub.empty:
        names = result.rows[sub["scenario"].iloc[0]]["group_names"]
        out["sub_scenario"] = str(sub["scenario"].iloc[0])
        for m, g in sub.groupby("method", sort=False):
            for _, r in g.iterrows():
                key = f"sub_{m}_{'kept' if r['group'] == 0 else 'removed'}"
                out[key] = float(r["change"])
                out[key + "_low"], out[key + "_high"] = float(r["change_low"]), float(r["change_high"])
        removes = [m for m in sub["method"].unique()
                   if ((sub["method"] == m) & (sub["group"] == 1) & sub["real"] & (sub["change"] < 0)).any()]
        out["sub_removes"] = wording.count_phrase(len(removes), sub["method"].nunique(), "method")
        out["sub_removes_list"] = ", ".join(shown(m) for m in removes) or "none"
        out["sub_task_removed"], out["sub_task_kept"] = names[1], names[0]
    ana = analogy_intervals(result, n_boot=n_boot)
    if not ana.empty:
        n_ana = ana["scenario"].nunique()
        out["analogy_pairs"] = int(n_ana)
        for m, g in ana.groupby("method", sort=False):
            out[f"analogy_score_{m}"] = float(g["score"].mean())
            out[f"analogy_gap_{m}"] = float(g["diff"].mean())
        survives = [m for m, g in ana.groupby("method", sort=False) if not g["diff_real"].any()]
        out["analogy_survives"] = wording.count_phrase(len(survives), ana["method"].nunique(), "method")
        out["analogy_survives_list"] = ", ".join(shown(m) for m in survives) or "none"
        breaks = [shown(m) for m in ana["method"].unique() if m not in survives]
        out["analogy_breaks"] = (f"{', '.join(breaks)} {'differs' if len(breaks) == 1 else 'differ'} from it by a "
                                 "real amount on at least one pair" if breaks else
                                 "no method's merged analogy differs from it by a real amount")
    out["backbones"] = ", ".join(dict.fromkeys(v.get("backbone", "") for v in result.rows.values() if v.get("backbone")))
    out["n_rows_min"] = int(min(len(v["labels"]) for v in result.rows.values()))
    out["n_rows_max"] = int(max(len(v["labels"]) for v in result.rows.values()))
    out["wall_minutes"] = float(result.scenarios["minutes (when computed)"].sum())
    for k, v in list(out.items()):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"fact {k} is {v}")
    return out


# ------------------------------------------------------------------------------------------ tables
@presentation
def against_paper_table(comp: pd.DataFrame) -> pd.DataFrame:
    """A reader's table of :func:`against_paper`: score and difference (×100) with their intervals."""
    t = comp.assign(method=comp["method"].map(_shown))
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    return pd.DataFrame({
        "scenario": t["scenario"], "method": t["method"],
        "score at λ=0.5 [95% CI]": [f"{pct(s)} [{pct(lo)}, {pct(hi)}]" for s, lo, hi
                                    in zip(t["score"], t["score_low"], t["score_high"])],
        "minus paper's [95% CI]": [f"{100 * d:+.1f} [{pct(lo)}, {pct(hi)}]" if m != _shown("paper") else "—"
                                   for m, d, lo, hi in zip(t["method"], t["diff"], t["diff_low"], t["diff_high"])],
        "real?": ["—" if m == _shown("paper") else ("yes" if r else "no") for m, r in zip(t["method"], t["diff_real"])],
    }).set_index(["scenario", "method"])


@presentation
def operator_table(ops: pd.DataFrame) -> pd.DataFrame:
    """Relative ΔW error of each method under negation and analogy (the worst over the pairs)."""
    labels = {"cancel": "θ ⊕ ⊖θ: ‖ΔW‖/‖ΔW₁‖ (exact: 0)", "subtract": "θ₁ ⊕ ⊖θ₂ vs ΔW₁ − ΔW₂",
              "analogy": "½θ₃ ⊕ ½θ₂ ⊕ ½⊖θ₁ vs its exact ΔW"}
    t = ops.pivot_table(index="method", columns="check", values="error", aggfunc="max", sort=False)
    t = t[[c for c in labels if c in t.columns]].rename(columns=labels)
    t.index = [_shown(m) for m in t.index]
    return t


@presentation
def subtraction_table(sub: pd.DataFrame) -> pd.DataFrame:
    """Accuracy change (points) of merge(θ₁, ⊖θ₂) from θ₁ alone, per task, with intervals."""
    if sub.empty:
        return sub
    t = sub.assign(method=sub["method"].map(_shown))
    t["change [95% CI]"] = [f"{100 * c:+.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
                            for c, lo, hi in zip(t["change"], t["change_low"], t["change_high"])]
    return t.pivot_table(index="method", columns="rows", values="change [95% CI]", aggfunc="first", sort=False)


@presentation
def analogy_table(ana: pd.DataFrame) -> pd.DataFrame:
    """Score of the merged analogy (×100) and its difference from the exact analogy's, with intervals,
    per pair and method."""
    if ana.empty:
        return ana
    t = ana.assign(method=ana["method"].map(_shown))
    t["score [95% CI]"] = [f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
                           for v, lo, hi in zip(t["score"], t["score_low"], t["score_high"])]
    t["minus exact [95% CI]"] = [f"{100 * v:+.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
                                 for v, lo, hi in zip(t["diff"], t["diff_low"], t["diff_high"])]
    return t.pivot_table(index="method", columns="scenario", values=["score [95% CI]", "minus exact [95% CI]"],
                         aggfunc="first", sort=False)


def _shown(method: str) -> str:
    return NAMES.get(method, method)


# ------------------------------------------------------------------------------------------ figures
@presentation
def accuracy_figure(sweep: pd.DataFrame, ncols: int = 4, bands: pd.DataFrame | None = None):
    """Score against λ, one panel per scenario, one line per method; `bands` (rows of :func:`intervals`)
    shade each line's bootstrap interval."""
    from . import plots

    df = sweep.drop(columns=["predictions"], errors="ignore")
    band = None
    if bands is not None:
        df = df.merge(bands[["scenario", "method", "lam", "score_low", "score_high"]], on=["scenario", "method", "lam"],
                      how="left")
        band = ("score_low", "score_high")
    df = df.assign(method=df["method"].map(_shown))
    return plots.sweep(df, "score", hue="method", col="scenario", ylabel="score (headline metric)", ncols=ncols,
                       title="each composition method against λ", band=band)


@presentation
def error_figure(errors: pd.DataFrame, ncols: int = 4):
    """Relative ΔW error against λ, one panel per scenario, one line per method (log scale)."""
    from . import plots

    df = errors.assign(method=errors["method"].map(_shown), error=errors["error"].clip(lower=1e-8))
    return plots.sweep(df, "error", hue="method", col="scenario", ncols=ncols, logy=True,
                       ylabel="‖ΔW − exact‖ / ‖exact‖", title="how far each method's ΔW is from λΔW₁ + (1−λ)ΔW₂")


@presentation
def cost_figure(table: pd.DataFrame):
    """Compose and apply time per method (ms, log scale) beside the composed module's size (MiB), coloured
    by whether it fits the live rank-r adapter."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from . import plots

    names = [_shown(m) for m in table.index]
    times = pd.concat([pd.DataFrame({"method": names, "step": step, "ms": table[col].fillna(0).to_numpy()})
                       for step, col in (("compose", "compose_ms"), ("apply + remove", "apply_ms"))])
    sizes = pd.DataFrame({"method": names, "size_mib": table["size_mib"].to_numpy(),
                          "adapter": ["fits the live rank-r adapter" if f else "needs a larger adapter"
                                      for f in table["fits_live_adapter"]]})
    width = plots.bar_panel_width(len(names), 2)
    fig, (a, b) = plt.subplots(1, 2, figsize=(2 * width, 3.4))
    sns.barplot(times, x="method", y="ms", hue="step", ax=a)
    a.set_yscale("log")
    a.set_ylabel("ms per λ point (median)")
    sns.barplot(sizes, x="method", y="size_mib", hue="adapter", dodge=False, ax=b,
                palette={"fits the live rank-r adapter": sns.color_palette()[2],
                         "needs a larger adapter": sns.color_palette()[3]})
    b.set_ylabel("composed module (MiB)")
    for ax in (a, b):
        ax.set_xlabel("")
        ax.tick_params(axis="x", labelrotation=30)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
        ax.legend(fontsize=8, title=None)
    fig.tight_layout()
    return plots.show(fig)
