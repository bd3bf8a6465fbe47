"""How sure a number is: bootstrap confidence intervals over the evaluation rows.

Cheap by design: the intervals resample per-row values a chapter already has (correctness, predictions,
scores), so they cost no forward pass. A statistic is a function of one or more row-aligned columns —
``np.mean`` of per-row correctness, or a metric of (predictions, labels) such as :func:`mcc` or
:func:`pearson` — and every resample draws the same row indices for every column (and, in
:func:`paired_diff_ci`, for both states), so a comparison of two states on the same rows is paired.
Intervals are percentile intervals (Efron & Tibshirani 1993, ch. 13).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np

Statistic = Callable[..., float]

# Resamples are drawn this many at a time, so a long evaluation set never builds one huge index matrix.
_CHUNK = 100


@dataclasses.dataclass(frozen=True)
class CI:
    """A point estimate with its bootstrap interval [low, high] at `level` (n rows, n_boot resamples)."""
    estimate: float
    low: float
    high: float
    level: float
    n: int
    n_boot: int
    se: float = math.nan  # the bootstrap standard error: the standard deviation of the resampled statistic

    @property
    def width(self) -> float:
        return self.high - self.low

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """{estimate, low, high} (keys prefixed), e.g. for a results row or a run's facts."""
        return {f"{prefix}estimate": self.estimate, f"{prefix}low": self.low, f"{prefix}high": self.high}

    def __str__(self) -> str:
        from .tables import readable
        return f"{readable(self.estimate)} [{readable(self.low)}, {readable(self.high)}]"


def mcc(predictions, labels) -> float:
    """Matthews correlation of class predictions with labels (multiclass form, as sklearn's; 0 when
    either side is constant) — fast enough to recompute a thousand times."""
    p, y = _as_int(predictions), _as_int(labels)
    k = int(max(p.max(initial=0), y.max(initial=0))) + 1
    c = np.bincount(y * k + p, minlength=k * k).reshape(k, k).astype(np.float64)
    t, q, n, correct = c.sum(axis=1), c.sum(axis=0), c.sum(), np.trace(c)
    denom = math.sqrt((n * n - q @ q) * (n * n - t @ t))
    return float((correct * n - t @ q) / denom) if denom > 0 else 0.0


def pearson(predictions, labels) -> float:
    """Pearson correlation of scores with labels (0 when either side is constant, as pemnb.evaluate)."""
    p, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    p, y = p - p.mean(), y - y.mean()
    denom = math.sqrt((p @ p) * (y @ y))
    return float(p @ y / denom) if denom > 0 else 0.0


def accuracy(predictions, labels) -> float:
    """Share of predictions equal to their labels."""
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1(predictions, labels) -> float:
    """F1 of the positive class (1) of binary predictions, as GLUE's MRPC and QQP (0 when undefined)."""
    p, y = _as_int(predictions) == 1, _as_int(labels) == 1
    tp = float(np.sum(p & y))
    denom = float(np.sum(p) + np.sum(y))
    return 2 * tp / denom if denom > 0 else 0.0


# A GLUE metric's name (pemnb.evaluate.METRICS) → the function a bootstrap recomputes per resample.
METRICS: dict[str, Statistic] = {"accuracy": accuracy, "mcc": mcc, "pearson": pearson, "f1": f1}


def metric(name: str) -> Statistic:
    """The resampling-speed function of a metric named as pemnb.evaluate names it."""
    if name not in METRICS:
        raise ValueError(f"no bootstrap metric {name!r}; choose one of {sorted(METRICS)}")
    return METRICS[name]


def bootstrap_ci(values, *columns, statistic: Statistic = np.mean, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> CI:
    """`statistic(values, *columns)` with its percentile bootstrap interval, resampling rows.

    `values`: per-row values (e.g. 0/1 correctness; the default statistic is their mean) or predictions;
    `columns`: further row-aligned arrays the statistic takes, e.g. the labels for ``statistic=mcc``.
    """
    cols = _columns(values, *columns)
    _check(n_boot, level)
    estimate = float(statistic(*cols))
    draws = _draws(lambda idx: statistic(*(c[idx] for c in cols)), cols, statistic, n_boot, seed)
    return _interval(estimate, draws, level, len(cols[0]), n_boot)


def paired_diff_ci(a_rows, b_rows, *columns, statistic: Statistic = np.mean, n_boot: int = 1000,
                   level: float = 0.95, seed: int = 0) -> CI:
    """`statistic(a) − statistic(b)` for two states evaluated on the SAME rows, with a paired bootstrap
    interval: each resample draws one set of row indices for both, so the rows' own difficulty cancels.

    `a_rows`, `b_rows`: per-row values (or predictions) of the two states, row-aligned; `columns`: shared
    row-aligned arrays (the labels), e.g. ``paired_diff_ci(pred_merged, pred_single, labels, statistic=mcc)``.
    """
    a, b, *shared = _columns(a_rows, b_rows, *columns)
    _check(n_boot, level)
    estimate = float(statistic(a, *shared)) - float(statistic(b, *shared))

    def diff(idx):
        rest = [c[idx] for c in shared]
        return statistic(a[idx], *rest) - statistic(b[idx], *rest)

    if statistic is np.mean and not shared:
        draws = _draws(None, [a.astype(np.float64) - b.astype(np.float64)], np.mean, n_boot, seed)  # mean(a) − mean(b) = mean(a − b), vectorised
    else:
        draws = _draws(diff, [a, b, *shared], None, n_boot, seed)
    return _interval(estimate, draws, level, len(a), n_boot)


def is_real(ci: CI | tuple[float, float]) -> bool:
    """Whether an interval of a difference excludes 0 — the only case in which the book calls it real."""
    low, high = (ci.low, ci.high) if isinstance(ci, CI) else ci
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"not an interval: ({low}, {high})")
    return low > 0 or high < 0


def beats(ci: CI, reference: float, n_se: float = 2.0) -> bool:
    """Whether an estimate lies more than `n_se` standard errors above a fixed reference (a majority-class
    rate, chance, a Pearson of 0) — the form of a target such as "beats the majority rate by more than two
    standard errors on the evaluation rows"."""
    if not math.isfinite(ci.se):
        raise ValueError("this interval has no standard error (make it with bootstrap_ci)")
    return ci.estimate - n_se * ci.se > reference


def standard_error(values) -> float:
    """Standard error of a mean of per-row values (sample standard deviation / √n)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"need a 1-D array of at least 2 values, got shape {v.shape}")
    return float(v.std(ddof=1) / math.sqrt(len(v)))


def _as_int(x) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or (a.size and (a.min() < 0 or not np.all(a == np.round(a)))):
        raise ValueError("class predictions and labels must be 1-D arrays of non-negative integers")
    return a.astype(np.int64)


def _columns(*arrays) -> list[np.ndarray]:
    cols = [np.asarray(a) for a in arrays]
    for i, c in enumerate(cols):
        if c.ndim != 1:
            raise ValueError(f"column {i} must be 1-D (one value per evaluation row), got shape {c.shape}")
    lengths = {len(c) for c in cols}
    if len(lengths) != 1:
        raise ValueError(f"row-aligned columns differ in length: {[len(c) for c in cols]}")
    if not lengths.pop():
        raise ValueError("no evaluation rows to resample")
    return cols


def _check(n_boot: int, level: float) -> None:
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")


def _draws(fn, cols: Sequence[np.ndarray], statistic, n_boot: int, seed: int) -> np.ndarray:
    """The statistic on `n_boot` resamples of the rows (one index set per resample, shared by all columns)."""
    rng = np.random.default_rng(seed)
    n = len(cols[0])
    out = []
    for start in range(0, n_boot, _CHUNK):
        idx = rng.integers(0, n, size=(min(_CHUNK, n_boot - start), n))
        if statistic is np.mean and len(cols) == 1:
            out.append(cols[0][idx].astype(np.float64).mean(axis=1))  # the common case, vectorised
        else:
            out.append(np.array([fn(i) for i in idx], dtype=np.float64))
    return np.concatenate(out)


def _interval(estimate: float, draws: np.ndarray, level: float, n: int, n_boot: int) -> CI:
    finite = draws[np.isfinite(draws)]
    if not len(finite):
        raise ValueError("the statistic is not finite on any resample")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    se = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
    return CI(estimate=estimate, low=float(low), high=float(high), level=level, n=n, n_boot=n_boot, se=se)


def interval_columns(rows: Sequence[Mapping], labels, *, statistic: Statistic = accuracy,
                     predictions: str = "predictions", name: str = "score", against=None, n_boot: int = 1000,
                     level: float = 0.95, seed: int = 0):
    """A results table with intervals, for tables and :func:`pemnb.plots.sweep`'s ``band=``.

    `rows`: mappings that hold each state's per-row `predictions` (e.g. one row per λ of a sweep);
    `labels`: the evaluation rows' labels. Adds `name`, `name_low`, `name_high` and, when `against`
    gives a reference state's per-row predictions on the same rows (the best single module, the base
    model), the paired difference `name_diff`, `name_diff_low`, `name_diff_high` and `name_diff_real`
    (the interval excludes 0). The predictions column is dropped. Every row uses the same resamples
    (one `seed`), so neighbouring λ are compared on the same draws.
    """
    import pandas as pd
    out = []
    for r in rows:
        if predictions not in r:
            raise ValueError(f"row {dict((k, v) for k, v in r.items() if k != predictions)} has no "
                             f"{predictions!r} column of per-row predictions")
        pred = np.asarray(r[predictions])
        row = {k: v for k, v in r.items() if k != predictions}
        ci = bootstrap_ci(pred, labels, statistic=statistic, n_boot=n_boot, level=level, seed=seed)
        row.update({name: ci.estimate, f"{name}_low": ci.low, f"{name}_high": ci.high})
        if against is not None:
            d = paired_diff_ci(pred, against, labels, statistic=statistic, n_boot=n_boot, level=level, seed=seed)
            row.update({f"{name}_diff": d.estimate, f"{name}_diff_low": d.low, f"{name}_diff_high": d.high,
                        f"{name}_diff_real": is_real(d)})
        out.append(row)
    if not out:
        raise ValueError("no rows to put intervals on")
    return pd.DataFrame(out)
