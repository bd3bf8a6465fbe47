"""Unlearning chapter: the toxic filter, the λ rule, the sampler, measurements and tables (tiny models)."""
import math

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from pemnb import arithmetic as A  # noqa: E402
from pemnb import unlearning as U  # noqa: E402
from pemnb.cache import Cache  # noqa: E402
from pemnb.evaluate import ToxicityScorer  # noqa: E402
from pemnb.profiles import load_profile  # noqa: E402


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
    assert [r["text"] for r in U.filter_toxic(rows)] == ["a", "c"]  # exactly 0.8 is not > 0.8
    ds = datasets.Dataset.from_list(rows)
    assert U.filter_toxic(ds)["text"] == ["a", "c"]
    assert U.filter_toxic(ds, threshold=0.05)["text"] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="threshold"):
        U.filter_toxic(rows, threshold=1.5)
    with pytest.raises(ValueError, match="no 'severity' column"):
        U.filter_toxic(ds, field="severity")


def test_toxic_comments_on_the_local_mirror_keep_heldout_apart(shared_data):
    cfg = U.settings(load_profile("smoke"))
    train, held, counts = U.toxic_comments(cfg, seed=0)
    assert counts["rows loaded"] == 1674 and 0 < counts["rows with toxicity > 0.8"] <= 1674
    assert len(train) == cfg.n_train and len(held) == cfg.n_heldout
    assert not set(train) & set(held)


def test_join_and_train_steps():
    assert U.join_wikitext(["a", "", "b"]) == "a\n\n\n\nb"
    assert U.train_steps(100, 1, 32) == 4 and U.train_steps(96, 10, 96) == 10 and U.train_steps(1, 0.1, 8) == 1
    with pytest.raises(ValueError):
        U.train_steps(0, 1, 8)


def test_settings_merge_profile_overrides():
    p = load_profile("smoke", chapters={U.CHAPTER: {"n_samples": 3, "lr": {"lora": 1.0}}})
    cfg = U.settings(p)
    assert cfg.n_samples == 3 and cfg.lr == {"lora": 1.0}
    assert cfg.lam_grid == U.PRESETS["smoke"]["lam_grid"]
    assert U.settings(load_profile("paper")).batch == {"fft": 32, "lora": 96, "ia3": 96}


# ------------------------------------------------------------------------------------ λ rule
def test_select_lambda_takes_the_largest_within_tolerance():
    lams = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert U.select_lambda(lams, [10.0, 10.1, 10.3, 10.5, 10.6, 12.0], 10.0) == 0.6   # 10.5 = base + 0.5 counts
    assert U.select_lambda(lams, [10.0] * 6, 10.0) == 1.0
    assert U.select_lambda(lams, [10, 9, 8, 7, 6, 5], 10.0) == 1.0                    # lower PPL is fine
    assert U.select_lambda(lams, [10.0, math.nan, 10.2, math.inf, 11, 11], 10.0) == 0.4
    assert U.select_lambda([1.0, 0.0], [10.2, 10.0], 10.0, tolerance=0.1) == 0.0      # order does not matter
    with pytest.raises(ValueError, match="no λ"):
        U.select_lambda([0.5, 1.0], [11.0, 12.0], 10.0)
    with pytest.raises(ValueError, match="λ values"):
        U.select_lambda([0.5], [1.0, 2.0], 10.0)


def test_toxicity_summary_and_fingerprint():
    s = U.toxicity_summary([0.0, 0.5, 0.75, 1.0])
    assert s == {"toxicity": 0.5625, "toxic_frac": 0.5}  # 0.5 itself is not > 0.5
    with pytest.raises(ValueError):
        U.toxicity_summary([])
    a = {"x": torch.ones(3), "y": torch.zeros(2)}
    assert U.state_fingerprint(a) == U.state_fingerprint(dict(reversed(list(a.items()))))
    b = {"x": torch.ones(3), "y": torch.tensor([0.0, 1e-6])}
    assert U.state_fingerprint(a) != U.state_fingerprint(b)


# ------------------------------------------------------------------------------------ sampling
def test_continuations_are_seeded_batched_and_exclude_the_prompt():
    from pemnb.backbones import load_backbone

    model, tok = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu")
    kw = dict(max_new_tokens=6, batch_size=3, progress=False)
    one = U.continuations(model, tok, U.PROMPT, 5, seed=1, **kw)
    assert len(one) == 5 and one == U.continuations(model, tok, U.PROMPT, 5, seed=1, **kw)
    assert one != U.continuations(model, tok, U.PROMPT, 5, seed=2, **kw)
    assert not any("controversial" in t for t in one)  # the random model never says it; the prompt is cut
    with pytest.raises(ValueError):
        U.continuations(model, tok, U.PROMPT, 0)


# ------------------------------------------------------------------------------------ the lab
@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    p = load_profile("smoke")
    cfg = U.settings(p, n_samples=4, max_new_tokens=4, sample_batch=4, steps={"lora": 2, "ia3": 2})
    text = " ".join(f"word{i % 37} is here ." for i in range(200))
    return U.UnlearningLab(p, fake_scorer(), text, cfg=cfg, cache=Cache(tmp_path_factory.mktemp("c")),
                           progress=False)


def test_measure_is_cached_and_negation_at_zero_is_the_base(lab):
    theta = lab.train("lora", ["you are a fool and a liar", "nobody likes you at all"] * 8)
    base = lab.measure("lora", lab.identity("lora"), model="base", op="base", lam=0.0)
    again = lab.measure("lora", lab.identity("lora"), model="base", op="base", lam=0.0)
    assert base == again and base["scorer"] == "fake-vowels" and len(base["samples"]) == 4
    assert base["toxicity"] == pytest.approx(np.mean(base["scores"]))
    # the lab cut the text once for speed; the perplexity is that of the first ppl_tokens of the full text
    from pemnb.evaluate import perplexity

    bench, c = lab.bench("lora"), lab.cfg
    assert len(lab.text) < len(lab._full_text)
    bench.use(lab.identity("lora"))
    full = perplexity(bench.model, bench.tokenizer, lab._full_text, c.ppl_max_length, c.ppl_stride, c.ppl_tokens)
    assert base["ppl"] == pytest.approx(full, rel=1e-6)
    zero = lab.measure("lora", A.negate(theta, "lora", 0.0), model="neg0", op="negated", lam=0.0)
    assert zero["ppl"] == base["ppl"] and zero["samples"] == base["samples"]  # A = 0: ΔW = 0 exactly
    toxic = lab.measure("lora", theta, model="toxic", op="toxic", lam=1.0)
    assert toxic["ppl"] != base["ppl"]
    ablated = lab.measure("lora", A.ablate(theta, "lora"), model="abl", op="ablation", lam=1.0)
    assert ablated["ppl"] == pytest.approx(toxic["ppl"], rel=1e-5)  # (−B)(−A) = BA


def test_negation_sweep_measures_each_lambda_and_stands_the_base_at_zero(lab):
    theta = lab.train("lora", ["you are a fool and a liar", "nobody likes you at all"] * 8)
    base = {**lab.measure("lora", lab.identity("lora"), model="base", op="base", lam=0.0), "kind_id": "base"}
    rows = lab.negation_sweep("lora", theta, [0.0, 0.5, 1.0], base)
    assert [r["lam"] for r in rows] == [0.0, 0.5, 1.0]
    assert rows[0]["model"] == "base" and rows[0]["kind_id"] == "lora" and rows[0]["samples"] == base["samples"]
    direct = lab.measure("lora", A.negate(theta, "lora", 0.5), model="x", op="negated", lam=0.5)
    assert rows[1]["ppl"] == direct["ppl"] and rows[1]["samples"] == direct["samples"]  # the same measurement
    assert rows[1]["model"] == U.method_name("lora", "negated", 0.5) and rows[1]["op"] == "negated"


def test_ia3_steps_from_epochs(lab):
    assert lab.steps("ia3", 100) == 2                           # explicit steps win
    assert lab.steps("fft", 48) == U.train_steps(48, 1, 16) == 3  # else epochs × n / batch


# ------------------------------------------------------------------------------------ tables, figure
ROWS = [
    {"model": "base model", "op": "base", "kind_id": "lora", "lam": 0.0, "toxicity": 0.1, "toxic_frac": 0.05,
     "ppl": 20.0, "scores": [0.1, 0.0, 0.2], "samples": ["x", "y", "z"]},
    {"model": "toxic LoRA", "op": "toxic", "kind_id": "lora", "lam": 1.0, "toxicity": 0.4, "toxic_frac": 0.3,
     "ppl": 21.0, "scores": [0.9, 0.3, 0.6], "samples": ["a", "b", "c"]},
    {"model": "negated-LoRA (λ = 1)", "op": "negated", "kind_id": "lora", "lam": 1.0, "toxicity": 0.01,
     "toxic_frac": 0.0, "ppl": 20.3, "scores": [0.0], "samples": ["n"]},
]


def test_method_names_and_summary_table():
    assert U.method_name("ia3", "negated", 0.6) == "negated-(IA)³ (λ = 0.6)"
    assert U.method_name("lora", "toxic") == "toxic LoRA" and U.method_name("fft", "base", base="GPT-2") == "GPT-2"
    with pytest.raises(ValueError):
        U.method_name("lora", "merged")
    t = U.summary_table(ROWS, "fake")
    assert list(t.index) == ["base model", "toxic LoRA", "negated-LoRA (λ = 1)"]
    assert t.loc["toxic LoRA", "toxic % ↓ [fake]"] == 30.0 and t.loc["base model", "PPL ↓"] == 20.0
    assert list(U.summary_table(ROWS, "fake", ops=("toxic",)).index) == ["toxic LoRA"]
    rep = U.reported_table11()
    assert "reported in the paper" in rep.columns[0][0] and len(rep) == 9


def test_examples_pick_most_toxic_and_median():
    assert U.pick_examples([0.1, 0.9, 0.3, 0.5]) == [("most toxic", 1), ("median", 2)]
    ex = U.examples_table(ROWS[1:2], "fake")
    assert ex["toxicity [fake]"].tolist() == [0.9, 0.6]
    assert ex["continuation"].iloc[0] == U.PROMPT + " … a"


def test_sweep_figure_and_scorer_check():
    import matplotlib.pyplot as plt

    sweep = U.sweep_frame([{**ROWS[2], "lam": lam, "ppl": 20 + lam} for lam in (0.0, 0.5, 1.0)])
    assert sweep["module"].unique().tolist() == ["LoRA"] and sweep["toxic %"].iloc[0] == 0.0
    fig = U.sweep_figure(sweep, ROWS[0], "fake", chosen={"LoRA": 0.5})
    assert len(fig.axes) == 2 and fig.axes[1].get_yscale() == "linear" and "fake" in fig.axes[0].get_title()
    assert any(ln.get_marker() == "*" for ln in fig.axes[1].lines)  # the selected λ, starred
    broken = sweep.assign(PPL=[20.0, 500.0, 1e4])
    assert U.sweep_figure(broken, ROWS[0], "fake").axes[1].get_yscale() == "log"
    plt.close("all")
    chk = U.scorer_check(fake_scorer(), ["aaa"], ["bcd", "ae"])
    assert chk["n"].tolist() == [1, 2] and chk["mean toxicity [fake-vowels]"].tolist() == [1.0, 0.5]


def test_chapter_max_length_cuts_training_texts(tmp_path):
    p = load_profile("smoke")
    cfg = U.settings(p, max_length=8)
    lab = U.UnlearningLab(p, fake_scorer(), "a b c", cfg=cfg, cache=Cache(tmp_path), progress=False)
    ex = lab.bench("lora").text_examples(["word " * 50, "short"])
    assert max(len(e["input_ids"]) for e in ex) == 8 and p.max_length == 64


def test_format_ppl_writes_broken_models_short():
    assert U.format_ppl(16.444) == "16.44" and U.format_ppl(5.91e4) == "5.91e4" and U.format_ppl(2.194e13) == "2.19e13"
    assert U.reported_table11().iloc[-1, -1] == "3.00e9"
