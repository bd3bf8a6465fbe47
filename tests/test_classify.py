"""ClassifierBench: cached training, in-place evaluation, sweeps, and the accelerate-ready CLI."""
import torch

from pemnb import arithmetic as A
from pemnb import data
from pemnb.cache import Cache
from pemnb.cache import fingerprint
from pemnb.classify import ClassifierBench
from pemnb.profiles import load_profile
from pemnb.sweep import sweep


def test_bench_trains_once_evaluates_in_place_and_sweeps(shared_data, tmp_path):
    profile = load_profile("smoke", steps=4, train_size=32, eval_size=32)
    train = data.subsample(data.load("glue/sst2", "train"), profile.train_size, seed=0)
    ev = data.subsample(data.load("glue/sst2", "validation"), profile.eval_size, seed=1)
    bench = ClassifierBench(profile, "glue/sst2", "lora", cache=Cache(tmp_path), progress=False)
    batches = bench.batches(ev)
    theta = bench.train(train, tag="t")
    assert not (tmp_path / "scratch").exists() or not any((tmp_path / "scratch").iterdir())  # checkpoint dropped
    assert bench.train(train, tag="t") is not theta  # a cache hit returns a fresh copy…
    assert all(torch.equal(theta[k], bench.train(train, tag="t")[k]) for k in theta)  # …of the same module
    m1 = bench.evaluate(theta, batches)
    rows = sweep(lambda lam: A.merge(theta, bench.identity(), lam, "lora"), [0.0, 1.0], bench.scorer(batches),
                 progress=False, curve="x")
    assert rows[1]["accuracy"] == m1["accuracy"] and rows[0]["curve"] == "x" and rows[0]["lam"] == 0.0
    many = bench.evaluate_many({"a": theta, "b": A.negate(theta, "lora")}, batches, kind="lora")
    assert [r["module"] for r in many] == ["a", "b"] and many[0]["accuracy"] == m1["accuracy"]


def test_evaluation_keeps_the_per_row_predictions_its_metrics_come_from(shared_data, tmp_path):
    from pemnb import stats
    from pemnb.evaluate import glue_metrics

    profile = load_profile("smoke", eval_size=24)
    ev = data.subsample(data.load("glue/sst2", "validation"), 24, seed=1)
    bench = ClassifierBench(profile, "glue/sst2", "lora", cache=Cache(tmp_path), progress=False)
    batches = bench.batches(ev)
    out = bench.evaluate(A.negate(bench.identity(), "lora", 0.3), batches)
    assert len(out["predictions"]) == len(ev) and set(out["predictions"]) <= {0, 1}
    assert glue_metrics("glue/sst2", out["predictions"], batches.labels)["accuracy"] == out["accuracy"]
    assert bench.evaluate(A.negate(bench.identity(), "lora", 0.3), batches)["predictions"] == out["predictions"]  # cached too
    ci = stats.bootstrap_ci(out["predictions"], batches.labels, statistic=stats.metric("accuracy"), n_boot=200)
    assert ci.low <= out["accuracy"] <= ci.high


def test_fingerprint_tracks_the_rows(shared_data):
    ds = data.load("glue/rte", "validation")
    assert fingerprint(ds.select(range(5))) == fingerprint(ds.select(range(5)))
    assert fingerprint(ds.select(range(5))) != fingerprint(ds.select(range(1, 6)))


def test_evaluations_are_cached_by_state_and_data(shared_data, tmp_path, monkeypatch):
    import pemnb.classify as C
    from pemnb.evaluate import EvalBatches

    profile = load_profile("smoke", eval_size=16)
    ev = data.subsample(data.load("glue/sst2", "validation"), 16, seed=1)
    bench = ClassifierBench(profile, "glue/sst2", "lora", cache=Cache(tmp_path), progress=False)
    batches, theta = bench.batches(ev), bench.identity()
    first = bench.evaluate(theta, batches)
    calls = []
    real = C.classify
    monkeypatch.setattr(C, "classify", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert bench.evaluate(theta, batches) == first and calls == []               # same state, same rows: a hit
    bench.evaluate(A.negate(theta, "lora", 0.5), batches)                          # another state: computed
    bench.evaluate(theta, bench.batches(ev.select(range(8))))                      # other rows: computed
    plain = EvalBatches(bench.examples(ev), bench.tokenizer.pad_token_id, 8)       # no cache key: always computed
    assert bench.evaluate(theta, plain) == first
    assert len(calls) == 3


def test_a_head_rate_is_part_of_a_modules_identity(shared_data, tmp_path):
    ds = data.subsample(data.load("glue/sst2", "train"), 16, seed=0)
    plain = load_profile("smoke", steps=2)
    faster_head = load_profile("smoke", steps=2, head_lr=5e-2)
    keys = {(kind, p.head_lr): ClassifierBench(p, "glue/sst2", kind, cache=Cache(tmp_path), progress=False)
            .module_key(ds, "t", 0, 2, 1e-3) for kind in ("lora", "fft") for p in (plain, faster_head)}
    assert "head_lr" not in keys[("lora", None)] and keys[("lora", 5e-2)]["head_lr"] == 5e-2
    assert keys[("fft", None)] == keys[("fft", 5e-2)]  # a full fine-tune trains its head at its one rate
    a = ClassifierBench(plain, "glue/sst2", "lora", cache=Cache(tmp_path), progress=False).train(ds, tag="t")
    b = ClassifierBench(faster_head, "glue/sst2", "lora", cache=Cache(tmp_path), progress=False).train(ds, tag="t")
    head = [k for k in a if "classifier" in k and k.endswith("weight")]
    assert head and not torch.equal(a[head[0]], b[head[0]])  # not handed the other rate's cached module
