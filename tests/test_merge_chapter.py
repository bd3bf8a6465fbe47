"""Chapter 06 (merge methods) and the sweep engine's fast path: exact identities on hand-made modules."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pemnb import arithmetic, merge_chapter, merge_methods, stats
from pemnb.backbones import load_backbone
from pemnb.modules import attach, read_state, write_state
from pemnb.profiles import load_profile
from pemnb.sweep import StateWriter, pair

SETTINGS = merge_chapter.settings(load_profile("smoke"), ties_density=0.5, dare_drop_rate=0.5, dare_seed=0, cost_repeat=1,
                       lam_grid=(0.0, 0.5, 1.0), tolerance=0.01)


def lora_state(seed, d_in=6, d_out=5, r=2, shared_a=None):
    g = torch.Generator().manual_seed(seed)
    s = {}
    for i in range(2):
        s[f"l{i}.q.lora_A.weight"] = shared_a[i] if shared_a else torch.randn(r, d_in, generator=g)
        s[f"l{i}.q.lora_B.weight"] = torch.randn(d_out, r, generator=g)
    s["head.weight"] = torch.randn(2, d_in, generator=g)
    return s


def model_with(kind="lora", r=2):
    model, _ = load_backbone("smoke-bert", "classification", 2, seed=0, device="cpu")
    return attach(model, kind, r=r, alpha=2 * r, init_seed=0)


def random_like(model, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in read_state(model).items()}


# ------------------------------------------------------------------------------------ sweep engine
@pytest.mark.parametrize("kind", ["lora", "ia3", "fft"])
def test_state_writer_puts_the_state_into_the_same_parameters(kind):
    model = model_with(kind)
    params_before = {n: id(p) for n, p in model.named_parameters()}
    state = random_like(model, 1)
    StateWriter(model)({k: v.double() for k, v in state.items()})  # converted to the model's dtype
    got = read_state(model)
    exact = kind != "fft"  # fft writes θ_pre + τ and reads back (θ_pre + τ) − θ_pre: rounding only
    for k, v in state.items():
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k], v) if exact else torch.allclose(got[k], v, atol=1e-6)
    assert {n: id(p) for n, p in model.named_parameters()} == params_before  # in place: no new objects
    write_state(model, random_like(model, 2))  # the one-off form is the same writer
    assert all(torch.allclose(read_state(model)[k], v, atol=1e-6) for k, v in random_like(model, 2).items())


def test_state_writer_raises_write_states_errors():
    model = model_with()
    writer, state = StateWriter(model), random_like(model, 2)
    writer(state)
    k = next(iter(state))
    layer = k.rsplit(".lora_", 1)[0]  # drop both factors of a layer: one alone is refused as unpaired
    with pytest.raises(ValueError, match="missing"):
        writer({key: v for key, v in state.items() if not key.startswith(layer + ".")})
    with pytest.raises(ValueError, match="shape"):
        writer({**state, k: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="NaN or Inf"):
        writer({**state, k: torch.full_like(state[k], math.nan)})
    with pytest.raises(ValueError, match="kind='lora'"):
        writer({key: v for key, v in state.items() if "lora" not in key})


def test_snapshot_and_restore_are_bit_exact():
    model = model_with()
    writer = StateWriter(model)
    before = read_state(model)
    snap = writer.snapshot()
    writer(random_like(model, 3))
    writer.restore(snap)
    assert all(torch.equal(v, read_state(model)[k]) for k, v in before.items())


@pytest.mark.parametrize("method", ["paper", "linear"])
def test_pair_equals_the_pure_method_bit_for_bit(method):
    s1, s2 = lora_state(1), lora_state(2)
    compose = pair(method, s1, s2)
    for lam in (0.0, 0.3, 0.5, 1.0, 1.7, -0.4):
        want = merge_methods.compose(method, [s1, s2], [lam, 1 - lam])
        got = compose(lam)
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_pair_refuses_other_methods_and_bad_states():
    with pytest.raises(ValueError, match="merge_methods.compose"):
        pair("ties", lora_state(1), lora_state(2))
    with pytest.raises(ValueError, match="different keys"):
        pair("paper", lora_state(1), {k: v for k, v in lora_state(2).items() if k != "head.weight"})


# ------------------------------------------------------------------------------------ ΔW errors
def test_paper_error_is_the_cross_term_error_and_exact_methods_have_none():
    s1, s2 = lora_state(1), lora_state(2)
    for lam in (0.25, 0.5):
        assert merge_chapter.delta_error("paper", s1, s2, lam, SETTINGS, 2.0) == pytest.approx(
            arithmetic.cross_term_error(s1, s2, lam, 2.0), rel=1e-6)
        assert merge_chapter.delta_error("paper", s1, s2, lam, SETTINGS, 2.0) > 0.01
        for exact in ("cat", "task_arith"):
            assert merge_chapter.delta_error(exact, s1, s2, lam, SETTINGS, 2.0) < 1e-6


def test_shared_a_removes_the_papers_cross_terms_but_not_linears():
    """B₁A + B₂A summed factor-wise is exact; peft's √λ split still doubles up the update."""
    g = torch.Generator().manual_seed(9)
    a = [torch.randn(2, 6, generator=g) for _ in range(2)]
    s1, s2 = lora_state(1, shared_a=a), lora_state(2, shared_a=a)
    assert merge_chapter.delta_error("paper", s1, s2, 0.5, SETTINGS, 1.0) < 1e-6
    # linear at λ = ½: B = √½(B₁+B₂), A = 2√½·A, so ΔW = (B₁+B₂)A = 2× the exact (B₁+B₂)A/2: error exactly 1
    assert merge_chapter.delta_error("linear", s1, s2, 0.5, SETTINGS, 1.0) == pytest.approx(1.0, rel=1e-5)


def test_dare_error_at_an_endpoint_is_its_rescaling_noise():
    """At λ = 1 DARE keeps each entry with prob. ½ and doubles it: ‖ΔW_dare − ΔW‖ = ‖ΔW‖ in expectation."""
    big = lora_state(1, d_in=60, d_out=50, r=4)
    err = merge_chapter.delta_error("dare", big, lora_state(2, d_in=60, d_out=50, r=4), 1.0, SETTINGS, 1.0)
    assert err == pytest.approx(1.0, abs=0.05)


def test_numerical_rank_ignores_float32_rounding():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(40, 3, generator=g) @ torch.randn(3, 30, generator=g)
    assert merge_chapter.numerical_rank(m) == 3
    assert merge_chapter.numerical_rank(torch.zeros(4, 4)) == 0


# ------------------------------------------------------------------------------------ costs, rule
def test_cost_rows_say_which_results_fit_the_live_adapter_and_restore_the_model():
    model = model_with(r=2)
    s1, s2 = random_like(model, 1), random_like(model, 2)
    before = read_state(model)
    sc = merge_chapter.Scenario("toy", "test", model, s1, s2, 2.0, lambda m: {"x": 0.0}, "x", ("a", "b"))
    rows = {r["method"]: r for r in merge_chapter.cost_rows(sc, SETTINGS)}
    assert list(rows) == list(merge_methods.METHODS)
    assert [m for m, r in rows.items() if r["fits_live_adapter"]] == ["paper", "linear", "svd"]
    for grown in ("cat", "knots", "tsv_m", "iso_c"):  # rank 2r: applied as their ΔW, so they have a time
        assert rows[grown]["rank"] == 4 and rows[grown]["returns"] == "LoRA" and rows[grown]["apply_ms"] > 0
    assert rows["task_arith"]["returns"] == "dense ΔW" and rows["task_arith"]["rank"] <= 4
    assert rows["cat"]["size_mib"] == pytest.approx(2 * rows["paper"]["size_mib"], rel=0.2)
    assert all(torch.equal(v, read_state(model)[k]) for k, v in before.items())


def table(scores, fits, ranks=(2, 2, 2), sizes=(1.0, 1.0, 1.0), times=(0.0, 0.0, 0.0), index=("a", "b", "c")):
    return pd.DataFrame({"score at λ=0.5": scores, "fits_live_adapter": fits, "rank": list(ranks),
                         "size_mib": list(sizes), "compose_ms": list(times), "apply_ms": [0.0] * len(scores)},
                        index=list(index))


def test_recommend_takes_the_cheapest_method_within_the_tolerance():
    t = table([0.80, 0.795, 0.70], [False, True, True], ranks=(8, 2, 2))
    rec = merge_chapter.recommend(t, tolerance=0.01)
    assert rec["method"] == "b" and rec["best_method"] == "a" and rec["candidates"] == ["b", "a"]
    assert merge_chapter.recommend(t, tolerance=0.0)["method"] == "a"
    assert merge_chapter.recommend(t, tolerance=0.2)["candidates"] == ["b", "c", "a"]  # fits, rank, size, name
    with pytest.raises(ValueError, match="no method"):
        merge_chapter.recommend(t.assign(**{"score at λ=0.5": np.nan}), 0.01)


def test_recommend_breaks_ties_by_rank_size_and_name_never_by_time():
    even = [0.6, 0.6, 0.6]
    fits = [False, False, False]
    for times in ((1.0, 2.0, 3.0), (3.0, 2.0, 1.0)):  # the clock's noise cannot move the pick
        assert merge_chapter.recommend(table(even, fits, ranks=(8, 4, 8), times=times), 0.0)["method"] == "b"
        assert merge_chapter.recommend(table(even, fits, ranks=(4, 4, 4), sizes=(2.0, 1.0, 1.0), times=times),
                                       0.0)["candidates"] == ["b", "c", "a"]
    assert merge_chapter.recommend(table(even, fits, index=("z", "y", "x")), 0.0)["method"] == "x"  # by name
    # registered methods in the registry's order: the paper's addition before peft's linear and SVD
    assert merge_chapter.recommend(table(even, [True] * 3, index=("svd", "linear", "paper")), 0.0)["candidates"] == [
        "paper", "linear", "svd"]


def test_quality_reads_lambda_half_and_the_best_lambda():
    sweep = pd.DataFrame({"scenario": ["s"] * 3, "method": ["m"] * 3, "lam": [0.0, 0.5, 1.0],
                          "score": [0.6, 0.7, 0.9]})
    q = merge_chapter.quality(sweep).iloc[0]
    assert q["score at λ=0.5"] == 0.7 and q["best score"] == 0.9 and q["best λ"] == 1.0


def test_settings_need_lambda_half():
    p = load_profile("smoke")
    assert merge_chapter.settings(p).lam_grid[0] == 0.0
    with pytest.raises(ValueError, match="0.5"):
        merge_chapter.settings(p, lam_grid=(0.0, 1.0))
    with pytest.raises(ValueError, match="unknown method"):
        merge_chapter.method_kwargs("nope", SETTINGS, 1.0)


def test_method_kwargs_names_and_cache_keys_come_from_the_registry():
    kw = {m: merge_chapter.method_kwargs(m, SETTINGS, 2.0) for m in merge_methods.METHODS}
    assert kw["paper"] == kw["linear"] == kw["cat"] == kw["iso_c"] == kw["tsv_m"] == {}
    assert kw["task_arith"] == kw["svd"] == {"scaling": 2.0}
    assert kw["ties"] == {"scaling": 2.0, "density": 0.5} and kw["knots"] == {"density": 0.5}
    assert kw["dare"] == {"scaling": 2.0, "drop_rate": 0.5, "seed": 0}
    assert merge_chapter.method_settings() == ("ties_density", "dare_drop_rate", "dare_seed")
    assert merge_chapter.ALL_METHODS == tuple(merge_methods.METHODS)
    assert "cat" not in merge_chapter.SWEPT and {"knots", "tsv_m", "iso_c"} <= set(merge_chapter.SWEPT)
    assert merge_chapter.NAMES["knots"] == merge_methods.METHODS["knots"].display


def test_factor_difference_is_zero_for_shared_factors_and_two_for_opposite_ones():
    s1 = lora_state(1)
    s2 = {k: (-v if "lora_B" in k else v) for k, v in s1.items()}
    assert merge_chapter.factor_difference(s1, s2, "A") == 0.0
    assert math.isinf(merge_chapter.factor_difference(s1, s2, "B"))
    s3 = {k: 3 * v for k, v in s1.items()}
    assert merge_chapter.factor_difference(s1, s3, "A") == pytest.approx(1.0)  # ‖A − 3A‖ / ‖2A‖
    with pytest.raises(ValueError, match="factor"):
        merge_chapter.factor_difference(s1, s2, "C")


def test_a_sweep_with_a_reused_writer_restores_the_module():
    from pemnb.sweep import in_place, restored, sweep

    model = model_with()
    writer = StateWriter(model)
    s1, s2 = random_like(model, 1), random_like(model, 2)
    writer(s1)
    with restored(writer):
        rows = sweep(pair("paper", s1, s2), [0.0, 1.0],
                     in_place(model, lambda m: {"a": float(read_state(m)[next(iter(s1))].sum())}, writer), progress=False)
    k = next(iter(s1))
    assert [r["a"] for r in rows] == pytest.approx([float(s2[k].sum()), float(s1[k].sum())])
    assert all(torch.equal(v, read_state(model)[key]) for key, v in s1.items())


# ------------------------------------------------------------------------------------ live adapter
def test_results_of_another_rank_go_to_the_live_adapter_as_their_update():
    s1, s2 = lora_state(1), lora_state(2)
    same = merge_chapter.on_live_adapter(merge_methods.paper([s1, s2], [0.5, 0.5]), 2, 2.0)
    assert isinstance(same, dict)
    for method in ("cat", "knots", "tsv_m", "iso_c"):
        out = merge_methods.compose(method, [s1, s2], [0.5, 0.5])
        live = merge_chapter.on_live_adapter(out, 2, 2.0)
        assert isinstance(live, merge_methods.DenseDelta)
        for t, dw in arithmetic.delta_weights(out, 2.0).items():
            torch.testing.assert_close(live.layers[t], dw)


# ------------------------------------------------------------------------------------ operators
def toy_scenario(seed=1, head=True):
    """A live smoke model, two modules and an evaluation with per-row predictions (12 random inputs):
    an encoder with a classification head, or (head=False) a decoder whose module has no head."""
    if head:
        model = model_with(r=2)
    else:
        model, _ = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu")
        model = attach(model, "lora", r=2, alpha=4, init_seed=0)
    s1, s2 = random_like(model, seed), random_like(model, seed + 1)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, 200, (12, 8), generator=g)
    labels = torch.randint(0, 2, (12,), generator=g).tolist()

    def evaluate(m):
        with torch.no_grad():
            logits = m(input_ids=ids).logits
        pred = (logits[:, :2] if logits.dim() == 2 else logits[:, -1, :2]).argmax(-1).tolist()
        return {"accuracy": float(np.mean(np.asarray(pred) == labels)), "predictions": pred}

    return merge_chapter.Scenario("toy", "test", model, s1, s2, 2.0, evaluate, "accuracy", ("b", "a"),
                                  labels=labels, groups=[0] * 6 + [1] * 6, group_names=("first", "second"))


def test_operator_rows_cancel_subtract_and_analogy():
    sc = toy_scenario()
    sc.third = random_like(sc.model, 9)
    rows = merge_chapter.operator_rows(sc, SETTINGS, evaluate=False)
    err = {(r["method"], r["check"]): r["error"] for r in rows}
    for exact in ("task_arith", "paper"):  # A − A or B − B: the paper's θ ⊕ ⊖θ is nothing, exactly
        assert err[(exact, "cancel")] < 1e-6
    for exact in ("task_arith",):
        assert err[(exact, "subtract")] < 1e-6 and err[(exact, "analogy")] < 1e-6
    assert err[("knots", "cancel")] > 0.1  # TIES' sign election keeps one side of ΔW and −ΔW
    assert err[("paper", "subtract")] > 0.01  # (B₁ − B₂)(A₁ + A₂): cross terms
    assert err[("iso_c", "cancel")] < 1e-6
    assert not any("predictions" in r for r in rows)


def test_chapter_result_facts_and_intervals_from_a_toy_scenario(tmp_path):
    from pemnb.cache import Cache

    sc = toy_scenario(head=False)
    out = merge_chapter.run_scenario(sc, SETTINGS, cache=Cache(tmp_path, namespace="results"), progress=False)
    assert {r["method"] for r in out["sweep"]} == set(merge_chapter.SWEPT)
    assert all(len(r["predictions"]) == 12 for r in out["sweep"])
    evaluated = [r for r in out["operators"] if r["check"] == "subtract"]
    assert len(evaluated) == len(merge_chapter.SWEPT) and all("predictions" in r for r in evaluated)
    result = merge_chapter.ChapterResult(
        pd.DataFrame(out["sweep"]), pd.DataFrame(out["errors"]), pd.DataFrame(out["costs"]),
        pd.DataFrame([{"scenario": "toy", "‖A₁−A₂‖ / ‖A‖": 0.1, "‖B₁−B₂‖ / ‖B‖": 0.2,
                       "minutes (when computed)": 0.01}]).set_index("scenario"),
        pd.DataFrame(out["operators"]),
        {"toy": {"labels": sc.labels, "groups": sc.groups, "metric": "accuracy",
                 "group_names": list(sc.group_names), "ends": list(sc.ends)}}, 0.0, 0.01)
    ci = result.score_intervals
    assert len(ci) == len(out["sweep"])
    paper = ci[ci["method"] == "paper"]
    assert (paper["diff"] == 0).all() and not paper["diff_real"].any()  # against itself
    assert ((ci["score_low"] <= ci["score"] + 1e-12) & (ci["score"] <= ci["score_high"] + 1e-12)).all()
    # the grouped statistic is the mean of the two groups' accuracies
    row = result.sweep.iloc[0]
    pred, y = np.asarray(row["predictions"]), np.asarray(sc.labels)
    want = np.mean([np.mean(pred[:6] == y[:6]), np.mean(pred[6:] == y[6:])])
    assert merge_chapter.score_statistic("accuracy")(pred, y, np.asarray(sc.groups)) == pytest.approx(want)
    facts = merge_chapter.facts(result, n_boot=200)
    for m in merge_chapter.SWEPT:
        assert f"half_{m}" in facts and f"cancel_{m}" in facts
    assert facts["rec_method"] in merge_chapter.NAMES.values()
    assert facts["n_pairs"] == 1 and "pair" in facts["vs_paper_task_arith"]
    assert facts["sub_task_removed"] == "second" and facts["sub_task_kept"] == "first"
    assert {f"sub_{m}_removed" for m in merge_chapter.SWEPT} <= set(facts)
    for k, v in facts.items():  # every fact is a flat value a run record accepts
        assert isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v)), (k, v)
    sub = merge_chapter.subtraction_intervals(result, n_boot=200)
    assert set(sub["rows"]) == {"first accuracy", "second accuracy"}
    assert not merge_chapter.against_paper_table(merge_chapter.against_paper(ci)).empty


def test_intervals_resample_the_score_the_sweep_reports():
    """Unequal groups: the grouped statistic (mean of the groups' accuracies) on the same draws; equal
    groups: the accuracy over all rows (the same number), resampled as a plain mean."""
    rng = np.random.default_rng(1)
    statistic = merge_chapter.score_statistic("accuracy")
    for sizes in ((60, 30), (45, 45)):
        labels, groups = rng.integers(0, 2, 90), np.repeat([0, 1], sizes)
        a, b = rng.integers(0, 2, 90), labels.copy()
        b[:20] = 1 - b[:20]
        sweep = pd.DataFrame([{"scenario": "s", "method": m, "lam": 0.5, "score": statistic(p, labels, groups),
                               "predictions": p.tolist()} for m, p in (("paper", a), ("task_arith", b))])
        result = merge_chapter.ChapterResult(sweep, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(),
                                             rows={"s": {"labels": labels.tolist(), "groups": groups.tolist(),
                                                         "metric": "accuracy"}})
        ci = merge_chapter.intervals(result, n_boot=500).set_index("method")
        assert ci.loc["task_arith", "diff"] == pytest.approx(statistic(b, labels, groups) - statistic(a, labels, groups))
        assert ci.loc["paper", "diff"] == 0.0 and not ci.loc["paper", "diff_real"]
        if sizes[0] != sizes[1]:
            grouped = stats.bootstrap_ci(b, labels, groups, statistic=statistic, n_boot=500)
            assert (ci.loc["task_arith", "score_low"], ci.loc["task_arith", "score_high"]) == (grouped.low, grouped.high)
        else:
            plain = stats.bootstrap_ci((b == labels).astype(float), n_boot=500)
            assert (ci.loc["task_arith", "score_low"], ci.loc["task_arith", "score_high"]) == (plain.low, plain.high)
            assert plain.estimate == pytest.approx(statistic(b, labels, groups))


def test_method_parameters_show_what_each_method_runs_with():
    shown = merge_chapter.method_parameters(SETTINGS)
    assert shown["TIES"] == "density 0.5 (ties_density), majority 'total', normalize False"
    assert shown["DARE"] == "drop_rate 0.5 (dare_drop_rate), seed 0 (dare_seed)"
    assert shown["SVD (rank r)"].startswith("rank: ") and "paper (A, B added)" not in shown


def test_the_analogy_is_evaluated_and_compared_with_the_exact_one():
    sc = toy_scenario(head=True)
    sc.third = random_like(sc.model, 9)
    ops = pd.DataFrame(merge_chapter.operator_rows(sc, SETTINGS, methods=("paper", "task_arith", "knots")))
    ana_rows = ops[ops["check"] == "analogy"]
    assert ana_rows["predictions"].map(len).eq(12).all()
    result = merge_chapter.ChapterResult(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), ops,
                                         rows={"toy": {"labels": sc.labels, "groups": sc.groups, "metric": "accuracy"}})
    ana = merge_chapter.analogy_intervals(result, n_boot=200).set_index("method")
    assert ana.loc["task_arith", "diff"] == 0.0 and not ana.loc["task_arith", "diff_real"]
    assert ana.loc["task_arith", "score"] == pytest.approx(ana_rows.set_index("method").loc["task_arith", "accuracy"])
    assert not merge_chapter.analogy_table(ana.reset_index()).empty


def test_the_multitask_scenario_scores_a_state_as_chapter_02s_evaluator_does(shared_data):
    from pemnb import multitask
    from pemnb.cache import Cache

    profile = load_profile("smoke", chapters={"multitask": {"train_rows": {"mnli": 16, "rte": 16},
                                                            "eval_rows": {"mnli": 12, "rte": 12}}})
    sc = merge_chapter.multitask_scenario(profile, merge_chapter.settings(profile, multitask_eval_rows=8),
                                          progress=False)
    s = multitask.settings(profile)
    bench = multitask.make_bench(profile, "lora", s, cache=Cache(), progress=False)
    fmt = multitask.prompt_format(bench, s)
    evaluator = multitask.Evaluator(bench, {t: multitask.EvalSet(t, multitask.load_task(t, s, seed=0).eval, fmt,
                                                                 bench.tokenizer).head(8) for t in multitask.TASKS})
    state = arithmetic.merge(sc.theta1, sc.theta2, 0.5, "lora")
    StateWriter(sc.model)(state)
    got, want = sc.evaluate(sc.model), evaluator(state)
    assert {t: got[t] for t in multitask.TASKS} == {t: r["accuracy"] for t, r in want.items()}
    assert got["predictions"] == [p for t in multitask.TASKS for p in want[t]["predictions"]]
    assert sc.labels == [int(y) for es in evaluator.evalsets.values() for y in es.labels] and len(sc.labels) == 16
