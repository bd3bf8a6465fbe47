"""pemnb.stats: bootstrap intervals are exact on known seeds, degenerate data give zero width, and a
95% interval covers the true value about 95% of the time on synthetic data."""
import math

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import matthews_corrcoef

from pemnb import stats


def test_mean_interval_is_the_percentiles_of_resampled_means():
    x = np.array([0, 1, 1, 0, 1, 1, 1, 0, 1, 1], dtype=float)
    ci = stats.bootstrap_ci(x, n_boot=200, level=0.9, seed=3)
    # the same resamples, drawn by hand: one index set per resample, in chunks of 100
    rng = np.random.default_rng(3)
    idx = np.concatenate([rng.integers(0, len(x), size=(100, len(x))) for _ in range(2)])
    means = x[idx].mean(axis=1)
    assert ci.estimate == x.mean() == 0.7
    assert ci.low == pytest.approx(np.percentile(means, 5), abs=1e-12)
    assert ci.high == pytest.approx(np.percentile(means, 95), abs=1e-12)
    assert (ci.n, ci.n_boot, ci.level) == (10, 200, 0.9)
    assert ci.low < 0.7 < ci.high


def test_same_seed_same_interval_other_seed_other_interval():
    x = np.random.default_rng(0).normal(size=50)
    assert stats.bootstrap_ci(x, seed=1) == stats.bootstrap_ci(x, seed=1)
    assert stats.bootstrap_ci(x, seed=1) != stats.bootstrap_ci(x, seed=2)


def test_all_equal_values_give_a_zero_width_interval():
    ci = stats.bootstrap_ci(np.ones(30))
    assert (ci.estimate, ci.low, ci.high, ci.width) == (1.0, 1.0, 1.0, 0.0)
    same = stats.paired_diff_ci(np.ones(30), np.ones(30))
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    assert not stats.is_real(same)


def test_paired_difference_of_identical_rows_shifted_is_exact():
    # b = a − 0.25 on every row: every resample's difference is exactly 0.25, whatever the rows' spread
    a = np.random.default_rng(1).integers(0, 5, size=40).astype(float)
    ci = stats.paired_diff_ci(a, a - 0.25)
    assert (ci.estimate, ci.low, ci.high) == (0.25, 0.25, 0.25)
    assert stats.is_real(ci)
    # unpaired intervals of the two means overlap, the paired one does not: pairing is what makes it sure
    ca, cb = stats.bootstrap_ci(a), stats.bootstrap_ci(a - 0.25)
    assert ca.low < cb.high


def test_paired_generic_statistic_uses_the_same_rows_as_the_vectorised_mean():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
    fast = stats.paired_diff_ci(a, b, seed=5)
    slow = stats.paired_diff_ci(a, b, statistic=lambda v: float(np.mean(v)), seed=5)
    assert fast.estimate == slow.estimate
    assert fast.low == pytest.approx(slow.low, abs=1e-12) and fast.high == pytest.approx(slow.high, abs=1e-12)


def test_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 3, 200))
    assert stats.mcc(p, y) == pytest.approx(matthews_corrcoef(y, p), abs=1e-12)
    assert stats.mcc(np.zeros(10, int), np.r_[np.zeros(5, int), np.ones(5, int)]) == 0.0  # constant side
    s, t = rng.normal(size=100), rng.normal(size=100)
    assert stats.pearson(s, t) == pytest.approx(pearsonr(s, t)[0], abs=1e-12)
    assert stats.pearson(np.ones(5), np.arange(5)) == 0.0
    assert stats.accuracy([1, 0, 1], [1, 1, 1]) == pytest.approx(2 / 3)


def test_metric_interval_resamples_rows_and_recomputes_the_metric():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 300)
    p = np.where(rng.random(300) < 0.8, y, 1 - y)
    ci = stats.bootstrap_ci(p, y, statistic=stats.mcc, n_boot=300, seed=0)
    assert ci.estimate == stats.mcc(p, y)
    assert ci.low < ci.estimate < ci.high and stats.is_real(ci)
    # a second model, worse on the same rows: the paired MCC difference is real and positive
    q = np.where(rng.random(300) < 0.55, y, 1 - y)
    d = stats.paired_diff_ci(p, q, y, statistic=stats.mcc, n_boot=300)
    assert d.estimate == pytest.approx(stats.mcc(p, y) - stats.mcc(q, y))
    assert d.low > 0


def test_coverage_of_a_95_percent_interval_on_synthetic_data():
    # 200 data sets of 200 Bernoulli(0.7) rows: the interval should hold 0.7 in about 95% of them
    hits = sum(stats.bootstrap_ci(np.random.default_rng(1000 + i).random(200) < 0.7, n_boot=400, seed=i).low
               <= 0.7 <= stats.bootstrap_ci(np.random.default_rng(1000 + i).random(200) < 0.7, n_boot=400,
                                            seed=i).high for i in range(200))
    assert 0.89 <= hits / 200 <= 0.99


def test_a_null_difference_is_called_real_about_five_percent_of_the_time():
    real = 0
    for i in range(200):
        rng = np.random.default_rng(i)
        a, b = rng.random(150) < 0.6, rng.random(150) < 0.6  # same accuracy, independent errors
        real += stats.is_real(stats.paired_diff_ci(a, b, n_boot=400, seed=i))
    assert real / 200 <= 0.11


def test_is_real_and_standard_error():
    assert stats.is_real((0.01, 0.2)) and stats.is_real((-0.3, -0.1)) and not stats.is_real((-0.1, 0.2))
    assert stats.standard_error([0, 1, 0, 1]) == pytest.approx(np.std([0, 1, 0, 1], ddof=1) / 2)
    with pytest.raises(ValueError, match="not an interval"):
        stats.is_real((0.3, 0.1))
    with pytest.raises(ValueError, match="not an interval"):
        stats.is_real((math.nan, 0.1))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_diff_ci([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="no evaluation rows"):
        stats.bootstrap_ci([])
    with pytest.raises(ValueError, match="1-D"):
        stats.bootstrap_ci(np.ones((3, 2)))
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_ci([1, 0], level=95)
    with pytest.raises(ValueError, match="n_boot"):
        stats.bootstrap_ci([1, 0], n_boot=0)
    with pytest.raises(ValueError, match="non-negative integers"):
        stats.mcc([0.5, 1], [0, 1])
    with pytest.raises(ValueError, match="not finite on any resample"):
        stats.bootstrap_ci([1.0, 2.0], statistic=lambda v: math.nan)


def test_ci_prints_and_exports():
    ci = stats.CI(estimate=0.8123, low=0.79, high=0.8344, level=0.95, n=100, n_boot=1000)
    assert str(ci) == "0.812 [0.79, 0.834]"
    assert ci.as_dict("acc_") == {"acc_estimate": 0.8123, "acc_low": 0.79, "acc_high": 0.8344}


def test_f1_and_the_metric_registry_match_sklearn():
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(8)
    y, p = rng.integers(0, 2, 120), rng.integers(0, 2, 120)
    assert stats.f1(p, y) == pytest.approx(f1_score(y, p), abs=1e-12)
    assert stats.f1([0, 0], [0, 0]) == 0.0
    from pemnb.evaluate import METRICS
    for names in METRICS.values():  # every GLUE headline metric but spearman has a bootstrap twin
        assert stats.metric(names[0]) in stats.METRICS.values()
    with pytest.raises(ValueError, match="no bootstrap metric"):
        stats.metric("bleu")


def test_interval_columns_for_a_sweep():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 200)
    single = np.where(rng.random(200) < 0.7, y, 1 - y)
    rows = [{"lam": lam, "kind": "lora", "predictions": np.where(rng.random(200) < acc, y, 1 - y)}
            for lam, acc in [(0.0, 0.5), (0.5, 0.95)]]
    df = stats.interval_columns(rows, y, against=single, n_boot=300)
    assert list(df.columns) == ["lam", "kind", "score", "score_low", "score_high", "score_diff", "score_diff_low",
                                "score_diff_high", "score_diff_real"]
    assert (df["score_low"] <= df["score"]).all() and (df["score"] <= df["score_high"]).all()
    assert df.loc[0, "score"] == stats.accuracy(rows[0]["predictions"], y)
    assert df.loc[0, "score_diff"] == pytest.approx(df.loc[0, "score"] - stats.accuracy(single, y))
    assert list(df["score_diff_real"]) == [True, True] and df.loc[0, "score_diff"] < 0 < df.loc[1, "score_diff"]
    with pytest.raises(ValueError, match="per-row predictions"):
        stats.interval_columns([{"lam": 0.0}], y)


def test_bootstrap_standard_error_and_beats():
    rng = np.random.default_rng(11)
    x = (rng.random(400) < 0.7).astype(float)
    ci = stats.bootstrap_ci(x, n_boot=2000)
    # the bootstrap SE of a mean is close to the textbook one
    assert ci.se == pytest.approx(stats.standard_error(x), rel=0.1)
    assert stats.beats(ci, 0.6) and not stats.beats(ci, 0.69)
    assert stats.beats(ci, ci.estimate - 2.01 * ci.se) and not stats.beats(ci, ci.estimate - 1.99 * ci.se)
    assert stats.bootstrap_ci(np.ones(10)).se == 0.0
    with pytest.raises(ValueError, match="no standard error"):
        stats.beats(stats.CI(0.5, 0.4, 0.6, 0.95, 10, 100), 0.3)
