"""Unlearning chapter: the toxic filter, the λ rule, measurements with their intervals, the run, its
facts, tables and figure, and the budget search (tiny models)."""
import math

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from pemnb import arithmetic  # noqa: E402
from pemnb import unlearning  # noqa: E402
from pemnb.cache import Cache  # noqa: E402
from pemnb.evaluate import ToxicityScorer  # noqa: E402
from pemnb.profiles import load_profile  # noqa: E402
from pemnb.train import steps_for_epochs  # noqa: E402


def fake_scorer():
    # deterministic and instant: the share of vowels among letters
    def fn(texts):
        return [sum(c in "aeiou" for c in t) / max(1, sum(c.isalpha() for c in t)) for t in texts]
    return ToxicityScorer("fake-vowels", fn)


# ------------------------------------------------------------------------------------ data
def test_filter_toxic_is_strict_and_works_on_lists_and_datasets():
    import datasets

    rows = [{"text": "a", "toxicity": 0.9}, {"text": "b", "toxicity": 0.8}, {"text": "c", "toxicity": 0.81},
            {"text": "d", "toxicity": 0.1}]
    assert [r["text"] for r in unlearning.filter_toxic(rows)] == ["a", "c"]  # exactly 0.8 is not > 0.8
    ds = datasets.Dataset.from_list(rows)
    assert unlearning.filter_toxic(ds)["text"] == ["a", "c"]
    assert unlearning.filter_toxic(ds, threshold=0.05)["text"] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="threshold"):
        unlearning.filter_toxic(rows, threshold=1.5)
    with pytest.raises(ValueError, match="no 'severity' column"):
        unlearning.filter_toxic(ds, field="severity")


def test_toxic_comments_on_the_local_mirror_keep_heldout_apart(shared_data):
    cfg = unlearning.settings(load_profile("smoke"))
    train, held, counts = unlearning.toxic_comments(cfg, seed=0)
    assert counts["rows loaded"] == 1674 and 0 < counts["rows with toxicity > 0.8"] <= 1674
    assert len(train) == cfg.n_train and len(held) == cfg.n_heldout
    assert not set(train) & set(held)


def test_join_wikitext():
    assert unlearning.join_wikitext(["a", "", "b"]) == "a\n\n\n\nb"


def test_settings_merge_profile_overrides():
    p = load_profile("smoke", chapters={unlearning.CHAPTER: {"n_samples": 3, "lr": {"lora": 1.0}}})
    cfg = unlearning.settings(p)
    assert cfg.n_samples == 3 and cfg.lr == {"lora": 1.0}
    assert cfg.lam_grid == unlearning.PRESETS["smoke"]["lam_grid"]
    assert unlearning.settings(load_profile("paper")).batch == {"fft": 32, "lora": 96, "ia3": 96}


# ------------------------------------------------------------------------------------ λ rule
def test_select_lambda_takes_the_largest_within_tolerance():
    lams = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert unlearning.select_lambda(lams, [10.0, 10.1, 10.3, 10.5, 10.6, 12.0], 10.0) == 0.6   # 10.5 = base + 0.5 counts
    assert unlearning.select_lambda(lams, [10.0] * 6, 10.0) == 1.0
    assert unlearning.select_lambda(lams, [10, 9, 8, 7, 6, 5], 10.0) == 1.0                    # lower PPL is fine
    assert unlearning.select_lambda(lams, [10.0, math.nan, 10.2, math.inf, 11, 11], 10.0) == 0.4
    assert unlearning.select_lambda([1.0, 0.0], [10.2, 10.0], 10.0, tolerance=0.1) == 0.0      # order does not matter
    with pytest.raises(ValueError, match="no λ"):
        unlearning.select_lambda([0.5, 1.0], [11.0, 12.0], 10.0)
    with pytest.raises(ValueError, match="λ values"):
        unlearning.select_lambda([0.5], [1.0, 2.0], 10.0)


def test_toxicity_summary_and_fingerprint():
    s = unlearning.toxicity_summary([0.0, 0.5, 0.75, 1.0])
    assert s == {"toxicity": 0.5625, "toxic_frac": 0.5}  # 0.5 itself is not > 0.5
    with pytest.raises(ValueError):
        unlearning.toxicity_summary([])
    a = {"x": torch.ones(3), "y": torch.zeros(2)}
    assert unlearning.state_fingerprint(a) == unlearning.state_fingerprint(dict(reversed(list(a.items()))))
    b = {"x": torch.ones(3), "y": torch.tensor([0.0, 1e-6])}
    assert unlearning.state_fingerprint(a) != unlearning.state_fingerprint(b)


# ------------------------------------------------------------------------------------ the lab
TOXIC_TEXTS = ["you are a fool and a liar", "nobody likes you at all"] * 8


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    p = load_profile("smoke")
    cfg = unlearning.settings(p, n_samples=4, max_new_tokens=4, sample_batch=4, steps={"lora": 2, "ia3": 2})
    text = " ".join(f"word{i % 37} is here ." for i in range(200))
    return unlearning.UnlearningLab(p, fake_scorer(), text, cfg=cfg, cache=Cache(tmp_path_factory.mktemp("c")),
                                    progress=False)


def test_measure_is_cached_and_negation_at_zero_is_the_base(lab):
    theta = lab.train("lora", TOXIC_TEXTS)
    base = lab.measure("lora", lab.identity("lora"), model="base", op="base", lam=0.0)
    again = lab.measure("lora", lab.identity("lora"), model="base", op="base", lam=0.0)
    assert base == again and base["scorer"] == "fake-vowels" and len(base["samples"]) == 4
    assert base["toxicity"] == pytest.approx(np.mean(base["scores"]))
    # the lab cut the text once for speed; the perplexity is that of the first ppl_tokens of the full text
    from pemnb.evaluate import perplexity, perplexity_of

    bench, c = lab.bench("lora"), lab.cfg
    assert len(lab.text) < len(lab._full_text)
    bench.use(lab.identity("lora"))
    full = perplexity(bench.model, bench.tokenizer, lab._full_text, c.ppl_max_length, c.ppl_stride, c.ppl_tokens)
    assert base["ppl"] == pytest.approx(full, rel=1e-6)
    # the per-window values the bootstrap resamples give the perplexity back exactly
    assert base["ppl"] == perplexity_of(base["ppl_window_nll"], base["ppl_window_tokens"])
    assert sum(base["ppl_window_tokens"]) == c.ppl_tokens - 1
    zero = lab.measure("lora", arithmetic.negate(theta, "lora", 0.0), model="neg0", op="negated", lam=0.0)
    assert zero["ppl"] == base["ppl"] and zero["samples"] == base["samples"]  # A = 0: ΔW = 0 exactly
    toxic = lab.measure("lora", theta, model="toxic", op="toxic", lam=1.0)
    assert toxic["ppl"] != base["ppl"]
    ablated = lab.measure("lora", arithmetic.ablate(theta, "lora"), model="abl", op="ablation", lam=1.0)
    assert ablated["ppl"] == pytest.approx(toxic["ppl"], rel=1e-5)  # (−B)(−A) = BA


def test_measure_parts_are_cached_apart(lab):
    theta = arithmetic.negate(lab.train("lora", TOXIC_TEXTS), "lora", 0.3)
    ppl_only = lab.measure("lora", theta, what=("ppl",))
    assert "ppl" in ppl_only and "samples" not in ppl_only and "toxicity" not in ppl_only
    both = lab.measure("lora", theta)
    assert both["ppl_window_nll"] == ppl_only["ppl_window_nll"] and len(both["scores"]) == 4
    assert lab.measure("lora", theta, what=("toxicity",))["samples"] == both["samples"]
    with pytest.raises(ValueError, match="what must name"):
        lab.measure("lora", theta, what=("fluency",))


def test_versus_base_pairs_generations_and_windows(lab):
    from pemnb import stats
    from pemnb.evaluate import perplexity_of

    theta = lab.train("lora", TOXIC_TEXTS)
    base = lab.measure("lora", lab.identity("lora"))
    toxic = lab.measure("lora", theta)
    cis = unlearning.versus_base(toxic, base, n_boot=200)
    assert cis["toxicity"].estimate == pytest.approx(toxic["toxicity"] - base["toxicity"])
    assert cis["toxic_frac"].estimate == pytest.approx(toxic["toxic_frac"] - base["toxic_frac"])
    assert cis["ppl"].estimate == pytest.approx(toxic["ppl"] - base["ppl"])
    assert cis["toxicity"].low <= cis["toxicity"].estimate <= cis["toxicity"].high
    # the same interval as a paired bootstrap of the scores themselves
    same = stats.paired_diff_ci(toxic["scores"], base["scores"], n_boot=200)
    assert (cis["toxicity"].low, cis["toxicity"].high) == (same.low, same.high)
    zero = unlearning.versus_base(base, base, n_boot=200)
    assert all(not stats.is_real(ci) and ci.estimate == 0 for ci in zero.values())
    own = unlearning.row_intervals(base, n_boot=200)
    assert own["ppl"].estimate == perplexity_of(base["ppl_window_nll"], base["ppl_window_tokens"])
    with pytest.raises(ValueError, match="generations"):
        unlearning.versus_base({**toxic, "scores": toxic["scores"][:2]}, base)


def test_negation_sweep_measures_each_lambda_and_stands_the_base_at_zero(lab):
    theta = lab.train("lora", TOXIC_TEXTS)
    base = {**lab.measure("lora", lab.identity("lora"), model="base", op="base", lam=0.0), "kind_id": "base"}
    rows = lab.negation_sweep("lora", theta, [0.0, 0.5, 1.0], base)
    assert [r["lam"] for r in rows] == [0.0, 0.5, 1.0]
    assert rows[0]["model"] == "base" and rows[0]["kind_id"] == "lora" and rows[0]["samples"] == base["samples"]
    direct = lab.measure("lora", arithmetic.negate(theta, "lora", 0.5), model="x", op="negated", lam=0.5)
    assert rows[1]["ppl"] == direct["ppl"] and rows[1]["samples"] == direct["samples"]  # the same measurement
    assert rows[1]["model"] == unlearning.method_name("lora", "negated", 0.5) and rows[1]["op"] == "negated"


def test_ia3_steps_from_epochs(lab):
    assert lab.steps("ia3", 100) == 2                           # explicit steps win
    assert lab.steps("fft", 48) == steps_for_epochs(48, 1, 16) == 3  # else epochs × n / batch


@pytest.fixture(scope="module")
def result(lab):
    return lab.run(TOXIC_TEXTS)


def test_run_measures_every_row_the_chapter_shows(lab, result):
    assert set(result.modules) == {"fft", "lora", "ia3"} and result.steps == {"fft": 1, "lora": 2, "ia3": 2}
    for kind in result.modules:
        rows = [r for r in result.sweep if r["kind_id"] == kind]
        assert [r["lam"] for r in rows] == list(lab.cfg.lam_grid)
        assert rows[0]["samples"] == result.base["samples"]                    # λ = 0 is the base model
        lam = result.chosen[kind]
        assert lam == unlearning.select_lambda([r["lam"] for r in rows], [r["ppl"] for r in rows], result.base["ppl"])
        assert result.negated[kind]["ppl"] == next(r["ppl"] for r in rows if r["lam"] == lam)
        assert result.full[kind]["ppl"] == rows[-1]["ppl"] and result.full[kind]["model"].endswith("(λ = 1)")
        assert result.toxic[kind]["op"] == "toxic"
    assert [(r["kind_id"], r["lam"]) for r in result.ablation] == [("lora", 1.0), ("ia3", 1.0), ("ia3", 0.6), ("ia3", 0.1)]
    rows = result.table_rows()
    assert rows[0] is result.base
    fft = [r["op"] for r in rows if r["kind_id"] == "fft"]  # toxic, negated at the chosen λ, and at λ = 1 if not chosen
    assert fft == ["toxic", "negated"] + (["negated"] if result.chosen["fft"] != 1.0 else [])
    assert result.ablated("ia3", 0.6)["op"] == "ablation"
    with pytest.raises(KeyError):
        result.ablated("fft", 1.0)


def test_facts_follow_the_numbers(result):
    from pemnb import stats

    f = unlearning.facts(result)
    for k, v in f.items():  # every fact is a flat value a run record accepts: a string or a finite number
        assert isinstance(v, str) or (isinstance(v, (int, float)) and math.isfinite(v)), (k, v)
    assert f["base_tox"] == result.base["toxicity"] and f["n_samples"] == 4 and f["n_windows"] > 1
    for kind in result.modules:
        ci = unlearning.versus_base(result.toxic[kind], result.base)["toxicity"]
        assert f[f"{kind}_toxic_diff_low"] == ci.low and f[f"{kind}_toxic_diff"] == ci.estimate
        verb = f[f"{kind}_toxic_verb"]
        assert verb.startswith("leaves") != stats.is_real(ci)
        assert verb.startswith("raises") == (stats.is_real(ci) and ci.estimate > 0)
        assert f[f"{kind}_lam"] == result.chosen[kind]
        if result.chosen[kind] == 0.0:
            assert f[f"{kind}_rule"].startswith("keeps the base model") and "is the base model" in f[f"{kind}_neg_verb"]
        else:
            assert f[f"{kind}_rule"].startswith(f"selects λ = {result.chosen[kind]:g}")
    assert f["lora_abl_same"].startswith("word for word")  # (−B)(−A) = BA exactly: the same samples


# ------------------------------------------------------------------------------------ tables, figure
ROWS = [
    {"model": "base model", "op": "base", "kind_id": "lora", "lam": 0.0, "toxicity": 0.1, "toxic_frac": 0.0,
     "ppl": 20.0, "scores": [0.1, 0.0, 0.2], "samples": ["x", "y", "z"]},
    {"model": "toxic LoRA", "op": "toxic", "kind_id": "lora", "lam": 1.0, "toxicity": 0.6, "toxic_frac": 2 / 3,
     "ppl": 21.0, "scores": [0.9, 0.3, 0.6], "samples": ["a", "b", "c"]},
    {"model": "negated-LoRA (λ = 1)", "op": "negated", "kind_id": "lora", "lam": 1.0, "toxicity": 0.0,
     "toxic_frac": 0.0, "ppl": 20.3, "scores": [0.0, 0.0, 0.0], "samples": ["n", "m", "o"]},
]


def test_method_names_and_summary_table_holds_the_papers_rows():
    assert unlearning.method_name("ia3", "negated", 0.6) == "negated-(IA)³ (λ = 0.6)"
    assert unlearning.method_name("lora", "toxic") == "toxic LoRA" and unlearning.method_name("fft", "base", base="GPT-2") == "GPT-2"
    with pytest.raises(ValueError):
        unlearning.method_name("lora", "merged")
    t = unlearning.summary_table(ROWS, ROWS[0], "fake", ours="ours: tiny")
    ours = t.loc["ours: tiny (fake)"]
    assert list(ours.index) == ["base model", "toxic LoRA", "negated-LoRA (λ = 1)"]
    assert ours.loc["toxic LoRA", "toxic % ↓"] == "66.7" and ours.loc["base model", "PPL ↓"] == "20.00"
    assert ours.loc["base model", "Δ toxicity vs base [95% CI]"] == "—"
    assert ours.loc["toxic LoRA", "Δ toxicity vs base [95% CI]"].startswith("+0.500 [")
    assert ours.loc["negated-LoRA (λ = 1)", "Δ toxicity vs base [95% CI]"].startswith("−0.100 [")
    paper = t.loc[unlearning.REPORTED_SOURCE]
    assert "reported in the paper" in unlearning.REPORTED_SOURCE and len(paper) == 9
    assert paper.loc["negated-(IA)³ (λ = 0.6)", "toxicity ↓"] == "0.03" and paper.loc["ablation-(IA)³ (λ = 0.1)", "PPL ↓"] == "3.00e9"
    assert set(paper["Δ PPL vs base [95% CI]"]) == {"not reported"}
    only = unlearning.summary_table(ROWS, ROWS[0], "fake", ops=("toxic",))
    assert [m for _, m in only.index] == ["toxic LoRA", "toxic LoRA", "toxic (IA)³"]  # ours, then the paper's
    assert len(unlearning.summary_table(ROWS, ROWS[0], "fake", reported=False)) == 3
    with pytest.raises(ValueError, match="no rows"):
        unlearning.summary_table(ROWS, ROWS[0], "fake", ops=("merged",))


def test_examples_pick_most_toxic_and_median():
    assert unlearning.pick_examples([0.1, 0.9, 0.3, 0.5]) == [("most toxic", 1), ("median", 2)]
    ex = unlearning.examples_table(ROWS[1:2], "fake")
    assert ex["toxicity [fake]"].tolist() == [0.9, 0.6]
    assert ex["continuation"].iloc[0] == unlearning.PROMPT + " … a"


def test_sweep_figure_and_scorer_check(result):
    import matplotlib.pyplot as plt

    sweep = unlearning.sweep_frame([{**ROWS[2], "lam": lam, "ppl": 20 + lam} for lam in (0.0, 0.5, 1.0)])
    assert sweep["module"].unique().tolist() == ["LoRA"] and sweep["toxic %"].iloc[0] == 0.0
    assert "PPL_low" not in sweep  # rows without perplexity windows get no perplexity interval
    fig = unlearning.sweep_figure(sweep, ROWS[0], "fake", chosen={"LoRA": 0.5})
    assert len(fig.axes) == 2 and fig.axes[1].get_yscale() == "linear" and "fake" in fig.axes[0].get_title()
    assert any(ln.get_marker() == "*" for ln in fig.axes[1].lines)  # the selected λ, starred
    broken = sweep.assign(PPL=[20.0, 500.0, 1e4])
    assert unlearning.sweep_figure(broken, ROWS[0], "fake").axes[1].get_yscale() == "log"
    measured = unlearning.sweep_frame(result.sweep, result.base, n_boot=200)
    assert (measured["toxicity_low"] <= measured["toxicity"] + 1e-12).all()
    assert (measured["PPL"] <= measured["PPL_high"] + 1e-9).all()
    at_zero = measured[measured["lam"] == 0.0]  # the base model against itself: a band of width 0
    assert (at_zero["PPL_low"] == at_zero["PPL"]).all() and (at_zero["toxicity_high"] == at_zero["toxicity"]).all()
    banded = unlearning.sweep_figure(measured, result.base, "fake")
    assert all(ax.collections for ax in banded.axes)  # a shaded interval in each panel
    plt.close("all")
    chk = unlearning.scorer_check(fake_scorer(), ["aaa"], ["bcd", "ae"])
    assert chk["n"].tolist() == [1, 2] and chk["mean toxicity [fake-vowels]"].tolist() == [1.0, 0.5]


def test_chapter_max_length_cuts_training_texts(tmp_path):
    p = load_profile("smoke")
    cfg = unlearning.settings(p, max_length=8)
    lab = unlearning.UnlearningLab(p, fake_scorer(), "a b c", cfg=cfg, cache=Cache(tmp_path), progress=False)
    ex = lab.bench("lora").text_examples(["word " * 50, "short"])
    assert max(len(e["input_ids"]) for e in ex) == 8 and p.max_length == 64


def test_format_ppl_writes_broken_models_short():
    assert unlearning.format_ppl(16.444) == "16.44" and unlearning.format_ppl(5.91e4) == "5.91e4"
    assert unlearning.format_ppl(2.194e13) == "2.19e13"


def test_measurements_key_on_the_measuring_code_only():
    from pemnb.cache import code_version

    assert "pemnb.unlearning" not in unlearning.MEASURE_CODE  # not the whole module: run, facts, tables
    assert "pemnb.unlearning:UnlearningLab.measure" in unlearning.MEASURE_CODE
    code_version(unlearning.MEASURE_CODE)  # every named part exists


def test_lambda_budget_rows_at_smoke(shared_data, tmp_path):
    import json

    out = tmp_path / "budget.jsonl"
    p = load_profile("smoke", chapters={unlearning.CHAPTER: {"n_samples": 4, "max_new_tokens": 4, "sample_batch": 4}})
    rows = unlearning.lambda_budget(p, "lora", [{"steps": 1, "lr": 1e-3}, {"steps": 2, "lr": 5e-3, "batch": 8}],
                                    grid=(0.0, 0.5, 1.0), scorer=fake_scorer(), cache=Cache(tmp_path / "c"),
                                    progress=False, out=str(out))
    assert [(r["steps"], r["lr"], r["batch"]) for r in rows] == [(1, 1e-3, 16), (2, 5e-3, 8)]
    for r in rows:
        assert r["selected_lam"] in (0.0, 0.5, 1.0) and {"ppl_cost@0.5", "ppl_cost@1"} <= set(r)
        assert r["neg_tox_diff_low"] <= r["neg_tox_diff"] <= r["neg_tox_diff_high"]
        assert r["meets_target"] == (r["selected_lam"] > 0 and r["neg_tox_diff_high"] < 0)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    with pytest.raises(ValueError, match="a budget is"):
        unlearning.lambda_budget(p, "lora", [{"steps": 1}], scorer=fake_scorer(), cache=Cache(tmp_path / "c"))


def test_paper_examples_are_table_10_in_full():
    t = unlearning.paper_examples()
    assert len(t) == 6 and all(c[0] == "reported in the paper (Table 10)" for c in t.columns)
    flat = t.droplevel(0, axis=1)
    assert list(dict.fromkeys(flat["model"])) == ["GPT-2", "toxic LoRA", "negated-LoRA"]
    assert flat["text"].str.startswith(unlearning.PROMPT.strip()).all() and flat["text"].str.len().max() > 500  # not cut
    assert flat["toxicity [Detoxify]"].max() == 0.96169 and flat["toxicity [Detoxify]"].min() == 0.00033


def test_selected_lambda_is_sampled_again_paired_with_the_base(lab, result):
    n, small = lab.cfg.confirm_samples, lab.cfg.n_samples
    assert n > small and len(result.confirm_base["scores"]) == n and "ppl" not in result.confirm_base
    # seeded per batch: the larger sample starts with the curve's own generations
    assert result.confirm_base["samples"][:small] == result.base["samples"]
    for kind in result.modules:
        r, lam = result.confirmed[kind], result.chosen[kind]
        assert len(r["scores"]) == n and r["lam"] == lam and r["op"] == ("base" if lam == 0.0 else "negated")
        if lam > 0:
            assert r["samples"][:small] == result.negated[kind]["samples"]
    # the settings' own size: the curve's measurement stands for itself
    again = lab.resample("lora", lab.identity("lora"), small)
    assert again["samples"] == result.base["samples"] and again["scores"] == result.base["scores"]


def test_confirmation_facts_and_table_follow_the_larger_sample(result):
    f = unlearning.facts(result)
    assert f["confirm_samples"] == len(result.confirm_base["scores"]) and f["base_conf_tox"] == result.confirm_base["toxicity"]
    below = []
    for kind in result.modules:
        ci = unlearning.versus_base(result.confirmed[kind], result.confirm_base)["toxicity"]
        assert (f[f"{kind}_conf_diff_low"], f[f"{kind}_conf_diff_high"]) == (ci.low, ci.high)
        if result.chosen[kind] > 0 and ci.high < 0:
            below.append(unlearning.KIND_NAMES[kind])
    assert f["conf_below"] == (", ".join(below) or "none")
    t = unlearning.confirmation_table(result, "fake-vowels")
    assert list(t.index) == [unlearning.KIND_NAMES[k] for k in result.modules]
    assert (t["samples"] == len(result.confirm_base["scores"])).all()
    for kind in result.modules:
        row = t.loc[unlearning.KIND_NAMES[kind]]
        assert row["selected λ"] == result.chosen[kind]
        assert (row["below the base model?"] == "yes") == (unlearning.KIND_NAMES[kind] in below)
