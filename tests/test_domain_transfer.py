"""Domain transfer by analogy: settings, splits, data shaping, the one evaluator, the sweep rows, their
summaries with intervals, and the facts the prose quotes."""
import numpy as np
import pandas as pd
import pytest
import torch

from pemnb import arithmetic
from pemnb import domain_transfer as transfer
from pemnb.backbones import smoke_tokenizer
from pemnb.cache import Cache
from pemnb.profiles import load_profile
from pemnb.train import steps_for_epochs


def test_paper_settings_follow_table_8_and_the_official_grid():
    s = transfer.settings(load_profile("paper"))
    assert s.backbones == ("t5-base", "t5-small")
    assert s.domains == {"yelp": "yelp_polarity", "amazon": "amazon_polarity"}
    assert s.batch_size == 128 and s.lora_r == 8 and s.chunk == 128
    expect = {"t5-base": {"fft": (5e-5, 1), "lora": (5e-4, 1), "ia3": (1e-3, 1)},
              "t5-small": {"fft": (5e-5, 1), "lora": (8e-4, 3), "ia3": (2e-3, 3)}}
    for b, kinds in expect.items():
        for kind, (lr, ep) in kinds.items():
            for role in ("cls", "lm"):
                assert s.hparams[b][kind][role] == {"lr": lr, "epochs": ep}
    assert set(transfer.PAPER_GRID) <= set(s.lam_grid)
    assert transfer.PAPER_GRID == (0.84, 0.86, 0.88, 0.9, 0.92, 0.94, 1.0)
    small = transfer.settings(load_profile("small"))
    assert small.backbones == ("smollm2-135m",) and small.split == "own"
    assert small.train_rows + small.dev_rows + small.test_rows <= 1000


def test_chapter_overrides_and_bad_settings():
    p = load_profile("smoke", chapters={"domain_transfer": {"chunk": 8, "lam_grid": (1.0,)}})
    s = transfer.settings(p)
    assert s.chunk == 8 and s.lam_grid == (1.0,)
    assert transfer.settings(load_profile("smoke")).chunk == transfer.PRESETS["smoke"]["chunk"]  # base not mutated
    with pytest.raises(ValueError, match="direction"):
        transfer.settings(load_profile("smoke", chapters={"domain_transfer": {"directions": (("yelp", "imdb"),)}}))
    with pytest.raises(ValueError, match="hyperparameters"):
        transfer.settings(load_profile("smoke", chapters={"domain_transfer": {"backbones": ("smoke-gpt2",)}}))


def test_own_split_is_disjoint_seeded_and_balanced_enough(shared_data):
    s = transfer.settings(load_profile("small"))
    a = transfer.domain_splits("amazon_sentences", s, seed=0)
    b = transfer.domain_splits("amazon_sentences", s, seed=0)
    assert [len(a[k]) for k in ("train", "dev", "test")] == [s.train_rows, s.dev_rows, s.test_rows]
    texts = {k: transfer.reviews(a[k], "amazon_sentences")[0] for k in a}
    assert texts["train"] == transfer.reviews(b["train"], "amazon_sentences")[0]  # same seed, same split
    labels = transfer.reviews(a["test"], "amazon_sentences")[1]
    assert set(labels) == {0, 1} and 0.35 < np.mean(labels) < 0.65
    c = transfer.domain_splits("amazon_sentences", s, seed=1)
    assert transfer.reviews(c["train"], "amazon_sentences")[0] != texts["train"]
    with pytest.raises(ValueError, match="cannot cut"):
        transfer.domain_splits("amazon_sentences", s.replace(train_rows=990), seed=0)


def test_own_split_partitions_the_file(shared_data):
    # sizes summing to the file: every row lands in exactly one part (a multiset partition of the rows)
    from pemnb import data
    s = transfer.settings(load_profile("smoke"), train_rows=500, dev_rows=100, test_rows=400)
    full = [(r["text"], r["label"]) for r in data.load("yelp_sentences", "train")]
    sp = transfer.domain_splits("yelp_sentences", s, seed=3)
    parts = [(r["text"], r["label"]) for k in ("train", "dev", "test") for r in sp[k]]
    assert sorted(parts) == sorted(full)
    assert [r["text"] for r in sp["train"]] != [t for t, _ in full[:500]]  # shuffled, not the file's order


def test_examples_prompt_answers_and_lm_chunks():
    tok = smoke_tokenizer()
    s = transfer.settings(load_profile("smoke"))
    ex = transfer.cls_examples(tok, ["great food", "awful service"], [1, 0], s, encoder_decoder=False)
    pos = tok(transfer.ANSWERS[1], add_special_tokens=False)["input_ids"]
    neg = tok(transfer.ANSWERS[0], add_special_tokens=False)["input_ids"]
    assert [t for t in ex[0]["labels"] if t != -100] == pos + [tok.eos_token_id]
    assert [t for t in ex[1]["labels"] if t != -100] == neg + [tok.eos_token_id]
    assert transfer.prompts(["x"], "Review: {text}\nSentiment:") == ["Review: x\nSentiment:"]
    texts = [f"sentence number {i} is here" for i in range(30)]
    lm = transfer.lm_examples(tok, texts, chunk=8, encoder_decoder=False)
    stream = sum((tok(" " + t, add_special_tokens=False)["input_ids"] for t in texts), [])
    assert len(lm) == len(stream) // 8 - 1
    assert lm[0]["input_ids"] == stream[:16] and lm[0]["labels"] == [-100] * 8 + stream[8:16]
    t5 = transfer.lm_examples(tok, texts, chunk=8, encoder_decoder=True)
    assert t5[1]["input_ids"] == stream[8:16] and t5[1]["labels"] == stream[16:24]
    with pytest.raises(ValueError, match="chunk"):
        transfer.lm_examples(tok, ["short"], chunk=64, encoder_decoder=False)


def test_accuracies_split_dev_and_test():
    ev = {"labels": np.array([1, 0, 1, 1]), "is_dev": np.array([True, False, False, False])}
    scores = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # predicts 1, 1, 1, 0
    assert transfer.accuracies(scores, ev) == {"accuracy": pytest.approx(1 / 3), "dev_accuracy": 1.0}


def test_evaluate_state_reads_the_test_rows_and_keeps_their_predictions():
    class Bench:  # scores answer 0 for every prompt
        def choice_scores(self, state, prompts, choices, batch_size=16):
            assert tuple(choices) == transfer.ANSWERS
            return np.tile([0.0, -1.0], (len(prompts), 1))

    ev = {"prompts": ["a", "b", "c", "d"], "labels": np.array([1, 1, 0, 1]), "is_dev": np.array([True, True, False, False])}
    out = transfer.evaluate_state(Bench(), {}, ev)
    assert out == {"accuracy": 0.5, "dev_accuracy": 0.0, "n_test": 2, "n_dev": 2, "predictions": [0, 0]}


def _rows():
    rows = []
    for d in ("yelp → amazon", "amazon → yelp"):
        base = {"backbone": "b", "direction": d}
        rows.append({**base, "kind": "lora", "method": transfer.ZERO_SHOT, "lam": None, "accuracy": 0.6, "dev_accuracy": 0.6})
        for kind, ceil in [("lora", 0.9), ("ia3", 0.85)]:
            rows.append({**base, "kind": kind, "method": "target cls (ceiling)", "lam": None, "accuracy": ceil,
                         "dev_accuracy": ceil})
            rows.append({**base, "kind": kind, "method": "source cls", "lam": None, "accuracy": 0.8, "dev_accuracy": 0.8})
            for lam, acc, dev in [(0.0, 0.5, 0.5), (0.9, 0.82, 0.84), (0.94, 0.83, 0.84), (1.0, 0.8, 0.8)]:
                rows.append({**base, "kind": kind, "method": "analogy", "lam": lam, "accuracy": acc, "dev_accuracy": dev})
    return pd.DataFrame(rows)


def test_pick_lambda_prefers_the_larger_lambda_on_ties():
    picked = transfer.pick_lambda(_rows())
    assert len(picked) == 4 and set(picked["lam"]) == {0.94}
    oracle = transfer.pick_lambda(_rows(), "accuracy")
    assert set(oracle["accuracy"]) == {0.83}


def test_transfer_table_and_gains():
    df = _rows()
    table = transfer.transfer_table(df)
    assert table.index[0] == (transfer.NO_MODULE, transfer.ZERO_SHOT)
    assert list(table.index.get_level_values(0)[1:]) == ["lora"] * 4 + ["ia3"] * 4
    assert table.loc[("lora", "analogy (λ on dev)"), ("b", "yelp → amazon")] == pytest.approx(0.83)
    assert table.loc[("ia3", "target cls (ceiling)"), ("b", "amazon → yelp")] == pytest.approx(0.85)
    g = transfer.gains(df)
    assert g.loc[("b", "yelp → amazon", "lora"), "gain"] == pytest.approx(0.03)
    assert g.loc[("b", "yelp → amazon", "lora"), "share of gap closed"] == pytest.approx(0.3)
    assert g.loc[("b", "yelp → amazon", "ia3"), transfer.ZERO_SHOT] == pytest.approx(0.6)
    assert transfer.chosen_lambdas(df).loc["ia3", ("b", "amazon → yelp")] == pytest.approx(0.94)
    fig = transfer.sweep_figure(*_labelled(df)[:1], "b", labels=_labelled(df)[1])
    assert all(ax.collections for ax in fig.axes if ax.get_visible())  # a band in every panel
    fig = transfer.sweep_figure(df, "b")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    # one row per direction, one column per kind, in the paper's order
    assert [ax.get_title() for ax in panels] == [f"{d} · {k}" for d in ("yelp → amazon", "amazon → yelp")
                                                 for k in ("lora", "ia3")]
    with pytest.raises(ValueError, match="no rows"):
        transfer.sweep_figure(df, "other")


def _labelled(df, n=100):
    """`df` with each row's target domain and test-row predictions that give its accuracy on `n` rows
    (the first accuracy·n rows answered right), and the labels they align with."""
    y = [i % 2 for i in range(n)]

    def predictions(acc):
        k = round(acc * n)
        return [v if i < k else 1 - v for i, v in enumerate(y)]

    df = df.assign(target=[d.split(" → ")[1] for d in df["direction"]],
                   predictions=[predictions(a) for a in df["accuracy"]], n_test=n)
    return df, {"amazon": y, "yelp": y}


def test_intervals_and_gains_pair_each_state_with_the_source_classifier():
    from pemnb import stats

    df, labels = _labelled(_rows())
    iv = transfer.with_intervals(df, labels, n_boot=300)
    assert "predictions" not in iv
    a = iv[(iv["method"] == "analogy") & (iv["lam"] == 0.94) & (iv["kind"] == "lora")].iloc[0]
    assert a["vs_source"] == pytest.approx(0.03) and a["vs_source_low"] <= 0.03 <= a["vs_source_high"]
    assert a["accuracy_low"] == pytest.approx(0.8 + a["vs_source_low"])
    src = iv[iv["method"] == "source cls"]
    assert (src["vs_source"] == 0).all() and not src["vs_source_real"].any()
    assert iv[(iv["method"] == "analogy") & (iv["lam"] == 0.0)]["vs_source_real"].all()  # 50% vs 80% of 100 rows
    assert iv[iv["method"] == transfer.ZERO_SHOT]["vs_source"].isna().all()  # no source classifier to pair with
    g = transfer.gains(df, labels, n_boot=300)
    r = g.loc[("b", "yelp → amazon", "lora")]
    same = stats.paired_diff_ci(transfer.correct(df[(df["kind"] == "lora") & (df["direction"] == "yelp → amazon") &
                                                    (df["lam"] == 0.94)].iloc[0], labels),
                                transfer.correct(df[(df["kind"] == "lora") & (df["direction"] == "yelp → amazon") &
                                                    (df["method"] == "source cls")].iloc[0], labels), n_boot=300)
    assert (r["gain"], r["gain_low"], r["gain_high"]) == pytest.approx((same.estimate, same.low, same.high))
    assert r["gain_real"] == stats.is_real(same)
    shown = transfer.gains_table(df, labels)
    assert shown.loc[("b", "yelp → amazon", "lora"), "gain [95% CI], points"].startswith("+3.0 [")
    with pytest.raises(ValueError, match="predictions for the"):
        transfer.correct({"target": "yelp", "predictions": [1, 0]}, labels)


def test_facts_follow_the_numbers():
    df, labels = _labelled(_rows())
    modules = pd.DataFrame([{"backbone": "b", "kind": k, "module": f"{role}({d})", "examples": 10, "steps": 3}
                            for k in ("lora", "ia3") for role in ("cls", "LM") for d in ("yelp", "amazon")])
    f = transfer.facts(transfer.Transfer(df, modules, labels), lora_delta={"dw_err": 0.4, "dw_err_scaled": 0.05},
                       n_boot=300)
    g = transfer.gains(df, labels, n_boot=300).loc["b"]
    helps = int((g["gain_real"].astype(bool) & (g["gain"] > 0)).sum())
    assert f["n_cases"] == 4 and f["n_helps"] == helps and f["n_hurts"] == 0 and f["n_test"] == 100
    assert f["zero_yelp_amazon"] == 0.6 and f["zero_amazon_yelp"] == 0.6
    assert f["lora_domain_transfer_yelp_gain"] == pytest.approx(0.03)
    assert f["mean_gap"] == pytest.approx(0.075) and f["gap_verb"].startswith("is ") and "above" in f["gap_verb"]
    assert f["lam0_verb"] == "falls" and f["lam0_reading"].startswith("That is why")  # 50% against 80%
    assert f["dw_reading"].startswith("drops to 0.05") and f["lora_cls_steps"] == 3
    if helps == 0:
        assert f["helps_phrase"] == "no case"


@pytest.mark.parametrize("backbone", ["smoke-llama", "smoke-t5"])
def test_run_kind_end_to_end_on_tiny_models(shared_data, tmp_path, backbone):
    profile = load_profile("smoke", chapters={"domain_transfer": {
        "backbones": (backbone,), "kinds": ("lora",), "train_rows": 24, "dev_rows": 8, "test_rows": 16,
        "chunk": 8, "lam_grid": (0.0, 0.9, 1.0)}})
    s = transfer.settings(profile)
    cache = Cache(tmp_path)
    out = transfer.run_kind(profile, backbone, "lora", s, cache=cache, progress=False)
    df = pd.DataFrame(out["rows"])
    assert set(df["direction"]) == {"yelp → amazon", "amazon → yelp"}
    for d, g in df.groupby("direction"):
        assert sorted(g.loc[g["method"] == "analogy", "lam"]) == [0.0, 0.9, 1.0]
        one = g[(g["method"] == "analogy") & (g["lam"] == 1.0)].iloc[0]
        src = g[g["method"] == "source cls"].iloc[0]
        assert src["accuracy"] == one["accuracy"] and src["dev_accuracy"] == one["dev_accuracy"]
        assert (g["n_test"] == 16).all() and (g["n_dev"] == 8).all()
        assert g["accuracy"].between(0, 1).all()
        truth = np.asarray(out["labels"][g["target"].iloc[0]])
        for _, r in g.iterrows():  # each row's test predictions give its accuracy back
            assert len(r["predictions"]) == 16 and np.mean(np.asarray(r["predictions"]) == truth) == r["accuracy"]
    assert len(out["modules"]) == 4 and {m["module"] for m in out["modules"]} == {
        "cls(yelp)", "LM(yelp)", "cls(amazon)", "LM(amazon)"}
    again = transfer.run_kind(profile, backbone, "lora", s, cache=cache, progress=False)  # a cached result
    assert again == out


def test_analogy_at_one_is_the_classifier_and_the_modules_share_an_init(shared_data, tmp_path):
    profile = load_profile("smoke", chapters={"domain_transfer": {"train_rows": 24, "dev_rows": 8,
                                                                  "test_rows": 8, "chunk": 8}})
    s = transfer.settings(profile)
    bench = transfer.make_bench(profile, "smoke-llama", "ia3", s, Cache(tmp_path), progress=False)
    mods, info = transfer.train_modules(bench, transfer.load_domains(profile, s), s)
    assert set(mods) == {"cls(yelp)", "LM(yelp)", "cls(amazon)", "LM(amazon)"}
    assert all(r["steps"] == steps_for_epochs(r["examples"], r["epochs"], r["batch"]) for r in info)
    c, t, m = mods["cls(yelp)"], mods["LM(amazon)"], mods["LM(yelp)"]
    assert arithmetic.max_abs_diff(arithmetic.analogy(c, t, m, 1.0, "ia3"), c) == 0.0
    # (IA)³ analogy with LM(target) = LM(source) is the classifier's δ scaled by λ
    half = arithmetic.analogy(c, m, m, 0.5, "ia3")
    for k in c:
        torch.testing.assert_close(half[k] - 1, 0.5 * (c[k] - 1))
    assert any(not torch.equal(c[k], m[k]) for k in c)  # the cls and LM modules did learn different things
