"""Beyond the paper: the ways to compose two LoRA modules, compared on the modules of chapters 01 and 02.

For two LoRA modules θ₁, θ₂ and a weight λ, each method of :mod:`pemnb.merge_methods` gives a module
meant to act like λΔW₁ + (1−λ)ΔW₂. This module runs them all on the same pairs of trained modules:

- the pairs are the LoRA modules of chapter 01 (s0 and s1 of a GLUE task, MiniLM with a classification
  head) and of chapter 02 (MNLI and RTE, SmolLM2 answering in words), fetched through those chapters'
  own functions and settings, so the cache hands back what those chapters trained;
- every method is swept over λ on the live model with :func:`pemnb.sweep.sweep` (LoRA results written
  in place, dense results added to the base weights and taken off again);
- the composed ΔW is compared with the exact λΔW₁ + (1−λ)ΔW₂ (relative Frobenius error: the paper's
  cross terms, SVD truncation, TIES trimming, DARE's random drops);
- cost: composition time, rank, size, and whether the result fits the live rank-r adapter;
- :func:`recommend` turns the measured numbers into a choice by a rule stated in its docstring.
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

from . import arithmetic as A
from . import merge_methods as MM
from .cache import TRAINING_CODE, Cache, state_fingerprint
from .profiles import Profile
from .settings import ChapterSettings
from .syntax import presentation

CHAPTER = "merge_methods"
CODE = TRAINING_CODE + ("pemnb.merge_chapter", "pemnb.merge_methods", "pemnb.sweep", "pemnb.evaluate",
                        "pemnb.arithmetic")

# The methods swept on the live model. `cat` is not swept: its ΔW is task_arith's exactly (a tested
# identity), it only needs an adapter of rank 2r to hold it; it is in the ΔW and cost comparisons.
SWEPT = ("paper", "linear", "svd", "task_arith", "ties", "dare")
ALL_METHODS = ("paper", "linear", "cat", "svd", "task_arith", "ties", "dare")
NAMES = {"paper": "paper (A, B added)", "linear": "peft linear", "cat": "cat (rank 2r)", "svd": "SVD (rank r)",
         "task_arith": "task arithmetic (ΔW)", "ties": "TIES", "dare": "DARE"}

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
        # The SmolLM2 pair is the expensive part: 6 methods × 5 λ evaluations. A calibration (1 thread,
        # load ≈ 3) scored 32 MNLI prompts in 7.2 s and 32 RTE prompts in 12.3 s, so 48 rows per task
        # cost ≈ 30 s per evaluation there, ≈ 15 min for the 30; less on two quiet threads. Not timed
        # end to end at this profile.
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
    """The keyword arguments `method` takes at these settings (scaling α/r, TIES density, DARE rate)."""
    if method not in MM.METHODS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(MM.METHODS)}")
    if method in ("paper", "linear", "cat"):
        return {}
    kw: dict[str, Any] = {"scaling": float(scaling)}
    if method == "ties":
        kw["density"] = float(settings.ties_density)
    elif method == "dare":
        kw.update(drop_rate=float(settings.dare_drop_rate), seed=int(settings.dare_seed))
    return kw


def compose_pair(method: str, theta1, theta2, lam: float, settings: Settings, scaling: float):
    """method(θ₁, θ₂) with weights (λ, 1−λ): a LoRA state or a DenseDelta."""
    return MM.compose(method, [theta1, theta2], [lam, 1.0 - lam], **method_kwargs(method, settings, scaling))


def composed_delta(composed, scaling: float) -> dict[str, torch.Tensor]:
    """{layer: ΔW} of a composition result (LoRA factors multiplied out, or a DenseDelta's layers)."""
    if isinstance(composed, MM.DenseDelta):
        return {t: dw.float() for t, dw in composed.layers.items()}
    return A.delta_weights(composed, scaling)


def delta_error(method: str, theta1, theta2, lam: float, settings: Settings, scaling: float) -> float:
    """‖ΔW_method − (λΔW₁ + (1−λ)ΔW₂)‖_F / ‖λΔW₁ + (1−λ)ΔW₂‖_F over all layers together.

    For 'paper' this is :func:`pemnb.arithmetic.cross_term_error`: the weight of the cross terms.
    """
    d1, d2 = A.delta_weights(theta1, scaling), A.delta_weights(theta2, scaling)
    exact = {t: lam * d1[t] + (1 - lam) * d2[t] for t in d1}
    return A.relative_error(composed_delta(compose_pair(method, theta1, theta2, lam, settings, scaling), scaling),
                            exact)


def factor_difference(theta1, theta2, factor: str = "A") -> float:
    """‖F₁ − F₂‖_F / ‖(F₁ + F₂)/2‖_F over all layers for the LoRA factor F ∈ {A, B}: how far two modules'
    factors are apart. With A₁ = A₂ the paper's addition is exactly the weighted sum of the updates."""
    if factor not in ("A", "B"):
        raise ValueError(f"factor must be 'A' or 'B', got {factor!r}")
    p1, p2 = A.lora_pairs(theta1), A.lora_pairs(theta2)
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

    evaluate(model) → {metric: value}; `score` names the metric the chapter ranks by (higher is better).
    """

    name: str
    source: str
    model: Any
    theta1: dict
    theta2: dict
    scaling: float
    evaluate: Callable[[Any], Mapping[str, float]]
    score: str
    ends: tuple[str, str]
    key: dict = field(default_factory=dict)
    note: str = ""

    @property
    def rank(self) -> int:
        return MM.rank_of(self.theta1)


def _classifier_metrics(model, batches, task: str) -> dict[str, float]:
    from .evaluate import classify

    return classify(model, batches, task)


def distribution_scenarios(profile: Profile, settings: Settings, *, progress: bool = True):
    """Chapter 01's LoRA pairs (s0, s1) for the tasks in ``settings.distribution_tasks``, one at a time.

    The modules come from :func:`pemnb.distribution.train_modules` with chapter 01's settings at this
    profile (a cache hit when chapter 01 ran first); scored on chapter 01's evaluation part.
    """
    from . import distribution as D
    from .cache import fingerprint
    from .evaluate import headline_metric

    ds = D.settings(profile)
    for task in settings.distribution_tasks:
        if task not in ds.tasks:
            continue
        try:
            td = D.task_data(task, profile, ds)
        except D.TaskSkipped:
            continue
        bench, mods = D.train_modules(profile, td, "lora", ds, progress=progress)
        batches = bench.batches(td.evalset)
        metric = headline_metric(task)
        yield Scenario(
            name=f"{task.upper()}: s0 + s1", source="chapter 01 (distribution)", model=bench.model,
            theta1=mods["s0"], theta2=mods["s1"], scaling=bench.scaling(),
            evaluate=functools.partial(_classifier_metrics, batches=batches, task=td.name), score=metric,
            ends=("s1 alone", "s0 alone"),
            key={"task": task, "encoder": bench.profile.encoder, "eval": fingerprint(td.evalset),
                 "theta1": state_fingerprint(mods["s0"]), "theta2": state_fingerprint(mods["s1"])},
            note=f"{bench.profile.encoder}, {len(td.evalset)} evaluation rows, {metric}")


def _answer_accuracy(model, tokenizer, evalsets, batch_size: int) -> dict[str, float]:
    from .evaluate import constrained_scores  # chapter 02's scorer: the answer beam search would pick

    out = {t: float((constrained_scores(model, tokenizer, es.prompts, es.choices, batch_size).argmax(1)
                     == es.labels).mean()) for t, es in evalsets.items()}
    out["mean"] = float(np.mean(list(out.values())))
    return out


def multitask_scenario(profile: Profile, settings: Settings, *, progress: bool = True) -> Scenario:
    """Chapter 02's LoRA pair (θ_MNLI, θ_RTE), from its functions and settings at this profile (a cache
    hit when chapter 02 ran first), scored by one-pass answer scoring on its evaluation rows (the
    first ``multitask_eval_rows`` of each task); `score` is the mean accuracy of the two tasks."""
    from . import multitask as MT

    ms = MT.settings(profile)
    tasks = {t: MT.load_task(t, ms, seed=profile.seed) for t in MT.TASKS}
    bench = MT.make_bench(profile, "lora", ms, cache=Cache(), progress=progress)
    fmt = MT.prompt_format(bench, ms)
    examples = {t: MT.training_examples(bench, t, d.train, fmt) for t, d in tasks.items()}
    modules = MT.train_task_modules(bench, examples, ms.hparams)
    n = settings.multitask_eval_rows
    evalsets = {t: MT.EvalSet(t, d.eval if n is None else d.eval.select(range(min(n, len(d.eval)))), fmt,
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
             "evaluation rows, mean accuracy")


# ------------------------------------------------------------------------------------------ sweeps
def method_sweep(scenario: Scenario, settings: Settings, methods: Sequence[str] = SWEPT, *,
                 progress: bool = True) -> list[dict]:
    """Rows {scenario, method, lam, metrics…, score, compose_s, eval_s}: every method swept over λ on
    the scenario's live model with :func:`pemnb.sweep.sweep` (the model's module is restored after)."""
    from .sweep import in_place, restored, sweep

    rows = []
    with restored(scenario.model) as writer:
        score = in_place(scenario.model, scenario.evaluate, writer)
        for m in methods:
            # ΔWᵢ, TIES' trims and DARE's masks do not depend on λ: computed once per method, not per point.
            at = MM.prepare(m, [scenario.theta1, scenario.theta2], **method_kwargs(m, settings, scenario.scaling))
            compose = functools.partial(_compose_prepared, at)
            for r in sweep(compose, settings.lam_grid, score, progress=progress, desc=f"{scenario.name} · {m}",
                           timings=True):
                rows.append({"scenario": scenario.name, "method": m, **r, "score": float(r[scenario.score])})
    return rows


def _compose_prepared(at, lam):
    return at([lam, 1.0 - lam])  # equals compose_pair(method, θ₁, θ₂, λ, …) bit for bit (tested)


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
               if isinstance(composed, MM.DenseDelta) else list(composed.values()))
    return sum(t.numel() * t.element_size() for t in tensors)


def cost_rows(scenario: Scenario, settings: Settings, methods: Sequence[str] = ALL_METHODS) -> list[dict]:
    """Rows {scenario, method, returns, rank, fits_live_adapter, size_mib, compose_ms, apply_ms} at λ = 0.5.

    compose_ms: median time of the composition alone. apply_ms: putting the result into the live model
    and taking it off again without evaluating (write the state; or add ΔW to the base weights and
    restore them); NaN for `cat`, whose rank-2r result needs a new adapter. size_mib: the composed
    module's tensors. rank: of a LoRA result (the number of rows of A); for a dense ΔW the largest
    numerical rank over the layers.
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
            dense = isinstance(composed, MM.DenseDelta)
            if dense:
                rank = max(numerical_rank(dw) for dw in composed.layers.values())
            else:
                rank = MM.rank_of(composed)
            fits = (not dense) and rank == r
            if dense:
                def apply(c=composed):
                    with delta_applied(scenario.model, c):
                        pass
            elif fits:
                apply = functools.partial(writer, composed)
            else:
                apply = None
            rows.append({"scenario": scenario.name, "method": m, "returns": "dense ΔW" if dense else "LoRA",
                         "rank": rank, "fits_live_adapter": bool(fits), "size_mib": _nbytes(composed) / 2 ** 20,
                         "compose_ms": 1e3 * _median_s(fn, repeat),
                         "apply_ms": 1e3 * _median_s(apply, repeat) if apply else float("nan")})
    finally:
        writer.restore(before)
    return rows


@dataclass
class ChapterResult:
    sweep: pd.DataFrame
    errors: pd.DataFrame
    costs: pd.DataFrame
    scenarios: pd.DataFrame
    seconds: float = 0.0


def run_scenario(scenario: Scenario, settings: Settings, *, cache: Cache | None = None,
                 progress: bool = True) -> dict:
    """Sweep rows, ΔW-error rows and cost rows of one scenario; cached by the modules' and evaluation
    data's fingerprints, the grid, the method settings and this code."""
    cache = cache if cache is not None else Cache(namespace="results", code_modules=CODE)
    keys = ("lam_grid", "ties_density", "dare_drop_rate", "dare_seed", "cost_repeat")
    parts = {"what": "merge-methods-scenario", "scenario": scenario.name, **scenario.key,
             **{k: v for k, v in settings.as_dict().items() if k in keys}}

    def compute() -> dict:
        t0 = time.perf_counter()
        sweep_rows = method_sweep(scenario, settings, progress=progress)
        errs = delta_error_rows(scenario.theta1, scenario.theta2, settings.lam_grid, settings,
                                scenario.scaling, scenario=scenario.name)
        costs = cost_rows(scenario, settings)
        return {"sweep": sweep_rows, "errors": errs, "costs": costs, "seconds": time.perf_counter() - t0}

    return cache.result(parts, compute)


def run_chapter(profile: Profile, settings: Settings | None = None, *, cache: Cache | None = None,
                progress: bool = True) -> ChapterResult:
    """Every scenario of the chapter: chapter 01's pairs, then chapter 02's, each loaded, swept and
    released before the next (one backbone in memory at a time)."""
    import gc

    from .backbones import torch_threads

    settings = settings if settings is not None else Settings.for_profile(profile)
    t0 = time.perf_counter()
    sweep, errors, costs, info = [], [], [], []

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
                         pd.DataFrame(info).set_index("scenario"), time.perf_counter() - t0)


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
       beside the base weights), then the smaller compose + apply time.

    Returns {method, quality, best_method, best_quality, candidates, rule}.
    """
    t = table.dropna(subset=[by])
    if t.empty:
        raise ValueError("no method has a score")
    best_method = str(t[by].idxmax())
    best = float(t[by].max())
    cands = t[t[by] >= best - tolerance - 1e-12].copy()
    cands["_time"] = cands["compose_ms"] + cands["apply_ms"].fillna(np.inf)
    cands = cands.sort_values(["fits_live_adapter", "_time"], ascending=[False, True])
    pick = str(cands.index[0])
    return {"method": pick, "quality": float(t.loc[pick, by]), "best_method": best_method, "best_quality": best,
            "candidates": list(map(str, cands.index)), "tolerance": float(tolerance), "by": by,
            "rule": (f"among the methods whose mean {by} is within {tolerance * 100:g} points of the best, "
                     "take one whose result fits the live rank-r adapter, then the fastest to compose and apply")}


# ------------------------------------------------------------------------------------------ figures
@presentation
def accuracy_figure(sweep: pd.DataFrame, ncols: int = 4):
    """Score against λ, one panel per scenario, one line per method."""
    from . import plots

    df = sweep.assign(method=sweep["method"].map(lambda m: NAMES.get(m, m)))
    return plots.sweep(df, "score", hue="method", col="scenario", ylabel="score (headline metric)", ncols=ncols,
                       title="each composition method against λ")


@presentation
def error_figure(errors: pd.DataFrame, ncols: int = 4):
    """Relative ΔW error against λ, one panel per scenario, one line per method (log scale)."""
    from . import plots

    df = errors.assign(method=errors["method"].map(lambda m: NAMES.get(m, m)),
                       error=errors["error"].clip(lower=1e-8))
    return plots.sweep(df, "error", hue="method", col="scenario", ncols=ncols, logy=True,
                       ylabel="‖ΔW − exact‖ / ‖exact‖", title="how far each method's ΔW is from λΔW₁ + (1−λ)ΔW₂")


@presentation
def cost_figure(table: pd.DataFrame):
    """Compose and apply time per method (ms, log scale) beside the composed module's size (MiB), coloured
    by whether it fits the live rank-r adapter."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from . import plots

    names = [NAMES.get(m, m) for m in table.index]
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
