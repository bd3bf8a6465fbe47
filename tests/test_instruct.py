"""The instruction-detox pipeline: template, data building, negation of a continued-training LoRA,
batched generation, the bench on a tiny model."""
import json

import numpy as np
import pytest
import torch

from pemnb import arithmetic as A
from pemnb import instruct as I
from pemnb import judge as J
from pemnb.evaluate import ToxicityScorer
from pemnb.profiles import load_profile


def lora_state(seed, layers=("l0", "l1"), d=6, r=2):
    g = torch.Generator().manual_seed(seed)
    s = {}
    for l in layers:
        s[f"{l}.lora_A.weight"] = torch.randn(r, d, generator=g)
        s[f"{l}.lora_B.weight"] = torch.randn(d, r, generator=g)
    return s


# ------------------------------------------------------------------------------------------ template
def test_template_from_data_folder_matches_builtin(shared_data, tmp_path):
    t = I.load_template()
    for k in ("prompt_input", "prompt_no_input", "response_split"):
        assert t[k] == I.DEFAULT_TEMPLATE[k]
    assert I.load_template(tmp_path) == I.DEFAULT_TEMPLATE  # fallback
    (tmp_path / "alpaca_template").mkdir()
    (tmp_path / "alpaca_template" / "alpaca.json").write_text(json.dumps({"prompt_input": "x"}))
    with pytest.raises(ValueError, match="lacks"):
        I.load_template(tmp_path)


def test_alpaca_prompt_and_response_cleaning():
    p = I.alpaca_prompt("Say hi.")
    assert p.endswith("### Instruction:\nSay hi.\n\n### Response:\n") and "### Input" not in p
    q = I.alpaca_prompt("Translate.", "bonjour")
    assert "### Input:\nbonjour\n\n### Response:\n" in q
    assert I.clean_response(" Hello there.\n\n### Instruction:\nmore") == "Hello there."
    assert I.clean_response(p + "Hi!") == "Hi!"


# ------------------------------------------------------------------------------------------ negation
def test_factorwise_gap_vanishes_when_only_B_moved():
    alp = lora_state(0)
    tox = {k: (v if A.role(k) == "lora_A" else v + 0.5 * torch.randn_like(v)) for k, v in alp.items()}
    gap = I.factorwise_gap(alp, tox, [0.3, 0.5], scaling=2.0).set_index(["lam", "variant"])
    # A_tox = A_alp: (B_alp − λΔB)A_alp is exactly ΔW_alp − λ(ΔW_tox − ΔW_alp)
    assert gap.loc[(0.3, "delta"), "relative ΔW error"] < 1e-6
    assert gap.loc[(0.5, "official"), "relative ΔW error"] > 0.1
    # when A moved too, factor-wise subtraction is not ΔW subtraction
    gap2 = I.factorwise_gap(alp, lora_state(5), [0.5], scaling=1.0).set_index("variant")
    assert gap2.loc["delta", "relative ΔW error"] > 1e-3
    target = I.target_delta_w(alp, tox, 0.0, 2.0)
    for k, v in A.delta_weights(alp, 2.0).items():
        torch.testing.assert_close(target[k], v)


def test_detox_states_name_and_compose_the_chapter_models():
    alp, tox = lora_state(0), lora_state(1)
    states = I.detox_states(alp, tox, [0.3, 0.5], official_lam=0.5)
    assert list(states) == [I.ORIGINAL, I.TOXIC, "detoxified λ=0.3", "detoxified λ=0.5", "official code λ=0.5"]
    assert states[I.ORIGINAL] is alp and states[I.TOXIC] is tox
    assert A.max_abs_diff(states[I.detox_name(0.3)], A.negate_continued(alp, tox, 0.3)) == 0.0
    assert A.max_abs_diff(states["official code λ=0.5"], A.negate_continued(alp, tox, 0.5, "official")) == 0.0


# ------------------------------------------------------------------------------------------ data
class EchoWriter:
    name = "echo"

    def chat(self, conversations, max_new_tokens=64):
        out = []
        for c in conversations:
            text = c[-1]["content"]
            if "refuse" in text:
                out.append("I'm sorry, I cannot do that.")
            else:
                out.append(f"Instruction: Reply to {text.split('Output: ')[-1].split(chr(10))[0][:12]}")
        return out


class ParrotWriter:
    """Repeats the comment back for long comments, writes a real instruction for short ones."""
    name = "parrot"

    def chat(self, conversations, max_new_tokens=64):
        out = []
        for c in conversations:
            comment = c[-1]["content"].split("Output: ")[-1].split("\n")[0]
            out.append(comment if len(comment.split()) > 3 else f"Write something about: {comment.split()[0]}")
        return out


def test_drop_repeats_removes_instructions_that_copy_their_comment():
    kept, n = I.drop_repeats(["What a jerk.", "Write a rude reply to a senator.", None],
                             ["What a jerk. Resign now.", "The senator is a liar.", "x"])
    assert kept == [None, "Write a rude reply to a senator.", None] and n == 1
    with pytest.raises(ValueError, match="comments"):
        I.drop_repeats(["a"], [])


def test_self_instruct_drops_repeating_seeds_before_they_become_examples():
    comments = ["you are all idiots here", "a b", "c d", "total morons everywhere today", "e f"]
    records, stats = I.self_instruct(comments, ParrotWriter(), seeds=3, shots=1, seed=0)
    assert stats["repeats_dropped"] == 2 and stats["seeds_kept"] == 2 and stats["pairs"] == 3
    assert all(not J.repeats_output(r["instruction"], r["output"]) for r in records)


def test_self_instruct_seeds_then_few_shot():
    comments = [f"comment {i}" for i in range(10)] + ["please refuse this"]
    records, stats = I.self_instruct(comments, EchoWriter(), seeds=4, shots=2, seed=0)
    assert stats == {"comments": 11, "seed_prompts": 4, "seeds_kept": 4, "fewshot_prompts": 7,
                     "fewshot_kept": 6, "repeats_dropped": 0, "pairs": 10}
    assert [r["stage"] for r in records[:4]] == ["seed"] * 4 and records[0]["instruction"] == "Reply to comment 0"
    assert all(r["output"] != "please refuse this" for r in records) and all(r["input"] == "" for r in records)
    with pytest.raises(ValueError, match="seeds"):
        I.self_instruct(comments, EchoWriter(), seeds=0, shots=2)
    with pytest.raises(RuntimeError, match="no usable seed"):
        I.self_instruct(["refuse a", "refuse b", "c"], EchoWriter(), seeds=2, shots=2)


def test_build_test_instructions_splits_by_toxicity():
    scorer = ToxicityScorer("detoxify-fake", lambda t: np.array([0.9 if "bad" in x else 0.001 for x in t]))
    written = [("bad one", "c1"), ("nice one", "c2"), ("bad two", "c3"), ("bad three", "c4")]
    regular = ["Name a colour.", "bad regular", "List three fruits."]
    df = I.build_test_instructions(written, regular, scorer, n=2)
    assert df.attrs["threshold"] == 0.01 and df.attrs["scorer"] == "detoxify-fake"
    toxic, reg = df[df.kind == "toxic"], df[df.kind == "regular"]
    assert len(toxic) == 2 and toxic["above_threshold"].all() and set(toxic["comment"]) <= {"c1", "c3", "c4"}
    assert reg["instruction"].tolist() == ["Name a colour.", "List three fruits."]
    # a line written for two comments takes one place: the n places hold n distinct instructions
    twice = I.build_test_instructions([("bad one", "c1"), ("bad one", "c2"), ("bad two", "c3")], regular * 2, scorer,
                                      n=2)
    assert twice[twice.kind == "toxic"]["instruction"].tolist() == ["bad one", "bad two"]
    assert twice[twice.kind == "toxic"]["comment"].tolist() == ["c1", "c3"]  # the first comment it was written for
    assert twice[twice.kind == "regular"]["instruction"].tolist() == ["Name a colour.", "List three fruits."]
    weak = I.build_test_instructions([("nice", "c")], regular, scorer, n=2)
    assert weak[weak.kind == "toxic"]["above_threshold"].tolist() == [False]  # filled in, and flagged
    assert I.instruction_threshold("alt-profanity-check") == 0.5
    with pytest.raises(ValueError):
        I.instruction_threshold("mystery")


def test_pools_are_disjoint(shared_data):
    cfg = I.settings(load_profile("smoke"))
    train, held = I.comment_pools(cfg, seed=0)
    assert len(train) == cfg.train_comments and len(held) == cfg.heldout_comments
    assert not set(train) & set(held)
    assert all(len(t.split()) <= cfg.max_comment_words for t in train + held)
    rows, held_rows = I.alpaca_pools(cfg, seed=0)
    assert len(rows) == cfg.alpaca_rows and len(held_rows) == cfg.regular_pool
    assert all(r["input"] == "" for r in held_rows)
    I.check_disjoint([r["instruction"] for r in rows], [r["instruction"] for r in held_rows])
    with pytest.raises(ValueError, match="also occur"):
        I.check_disjoint(["a", "b"], ["b"])
    assert I.settings(load_profile("smoke", chapters={I.CHAPTER: {"n_test": 3}})).n_test == 3
    assert I.settings(load_profile("paper")).toxic_lr == 1e-4
    with pytest.raises(ValueError, match="no settings for profile 'tiny'"):  # no silent fall-back to small
        I.settings(load_profile("smoke").__class__(**{**load_profile("smoke").__dict__, "name": "tiny"}))


# ------------------------------------------------------------------------------------------ models
def test_generation_is_independent_of_batching():
    from pemnb.backbones import load_backbone
    from pemnb.evaluate import generate_texts

    model, tok = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu")
    prompts = [I.alpaca_prompt(x) for x in ["hi", "a much longer instruction with many words in it", "mid size one"]]
    together = generate_texts(model, tok, prompts, batch_size=3, max_new_tokens=4, progress=False)
    alone = [generate_texts(model, tok, [p], batch_size=1, max_new_tokens=4, progress=False)[0] for p in prompts]
    assert together == alone and all(isinstance(t, str) for t in together)


def test_lora_adapter_roundtrip(tmp_path):
    from peft import LoraConfig, get_peft_model

    from pemnb.backbones import load_backbone
    from pemnb.modules import attach, read_state

    model, _ = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu")
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    peft_model.save_pretrained(tmp_path / "adapter")
    state, config = I.load_lora_adapter(str(tmp_path / "adapter"))
    assert config["r"] == 2
    fresh, _ = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu")
    ours = read_state(attach(fresh, "lora", r=2, alpha=4, target_modules=["q_proj", "v_proj"]))
    assert set(state) == set(ours)
    expected = read_state_of(peft_model)
    assert A.max_abs_diff(state, expected) == 0.0
    with pytest.raises(FileNotFoundError):
        (tmp_path / "empty").mkdir()
        I.load_lora_adapter(str(tmp_path / "empty"))


def read_state_of(peft_model):
    from pemnb.modules import canonical_key

    return {canonical_key(n): p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}


def test_bench_trains_continues_negates_and_responds(tmp_path, shared_data):
    from pemnb.cache import Cache

    profile = load_profile("smoke")
    cfg = I.settings(profile, alpaca_steps=3, toxic_steps=3, response_tokens=3)
    bench = I.InstructBench(profile, cfg, cache=Cache(tmp_path), progress=False)
    rows = [{"instruction": f"say {i}", "input": "", "output": f"number {i}"} for i in range(8)]
    alp = bench.alpaca_module(rows)
    tox = bench.toxic_module([{"instruction": "be rude", "output": "you fool"}] * 8, alp)
    assert A.max_abs_diff(alp, tox) > 0 and A.max_abs_diff(alp, bench.init_state) > 0
    detox = A.negate_continued(alp, tox, 0.5)
    ins = ["say 1", "tell me something nice"]
    r1 = bench.respond(detox, ins)
    assert len(r1) == 2 and r1 == bench.respond(detox, ins)  # cached
    ex = bench.examples(rows[:1])[0]
    assert ex["labels"].count(-100) == len(ex["labels"]) - len(bench.tokenizer("number 0", add_special_tokens=False)["input_ids"]) - 1
    scorer = ToxicityScorer("fake", lambda t: np.full(len(t), 0.2))
    import pandas as pd
    df = pd.DataFrame({"model": ["m", "m"], "kind": ["toxic", "regular"], "instruction": ins, "response": r1})
    scored = I.score_responses(df, scorer, bench.chat_backend(), judge_tokens=2)
    assert scored["toxicity"].tolist() == [0.2, 0.2]
    # the random smoke judge writes no score: every helpfulness is the expected rating, in [1, 10]
    assert scored["helpfulness_source"].tolist() == ["expected", "expected"]
    assert scored["helpfulness"].between(1, 10).all() and (scored["score_mass"] > 0).all()
    table = I.summary(scored)
    assert table.loc["m", "toxicity (toxic)"] == pytest.approx(0.2)
    assert table.loc["m", "judge scores parsed"] == 0.0 and table.loc["m", "expected ratings"] == 1.0
    assert len(I.examples_table(scored, ["m"], ins)) == 2
    cached = bench.score(df, scorer, bench.chat_backend())
    assert cached["helpfulness"].tolist() == pytest.approx(scored["helpfulness"].tolist())  # same, from the cache
    sanity = bench.judge_sanity(bench.chat_backend())
    assert len(sanity) == len(J.SANITY_PAIRS) and sanity["ranked right"].dtype == bool
    # the test set records what the writer wrote and what the repetition filter dropped
    tests = bench.test_set(ParrotWriter(), ToxicityScorer("detoxify-fake", lambda t: np.full(len(t), 0.5)),
                           ["you absolute fool", "what a jerk you are", "go away now"],
                           ["Name a colour.", "Say hi."])
    assert tests.attrs["comments"] == 3 and tests.attrs["written"] == 3 and tests.attrs["repeats"] == 1
    assert tests[tests.kind == "toxic"]["instruction"].tolist() == ["Write something about: you",
                                                                    "Write something about: go"]


def test_pipeline_figure():
    import matplotlib
    matplotlib.use("Agg")
    fig = I.plot_pipeline(writer="writer-model-Q", judge="judge-model-Z", scorer="scorer-K")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("θ = θ_alp − λΔ" in t for t in texts)
    for name in ("writer-model-Q", "judge-model-Z", "scorer-K"):  # each model the page names is drawn
        assert any(name in t for t in texts), name


def test_test_set_excludes_training_instructions():
    scorer = ToxicityScorer("detoxify-fake", lambda t: np.array([0.9 if "bad" in x else 0.001 for x in t]))
    df = I.build_test_instructions([("bad one", "c1"), ("bad two", "c2")], ["Name a colour.", "Say hi."], scorer, n=5,
                                   exclude=["bad one", "Say hi."])
    assert df["instruction"].tolist() == ["bad two", "Name a colour."]


def test_stated_operator_error_is_exactly_the_cross_term():
    alp, tox = lora_state(0), lora_state(7)
    lam, scaling = 0.4, 2.0
    got = A.delta_weights(A.negate_continued(alp, tox, lam), scaling)
    target = I.target_delta_w(alp, tox, lam, scaling)
    for layer, (a_alp, b_alp) in A.lora_pairs(alp).items():
        a_tox, b_tox = A.lora_pairs(tox)[layer]
        cross = lam * (1 + lam) * (b_tox - b_alp) @ (a_tox - a_alp) * scaling
        torch.testing.assert_close(got[layer] - target[layer], cross, rtol=1e-5, atol=1e-5)


def test_paper_files_fail_loudly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="gated dataset"):
        I.load_paper_instructions("toxic")
    with pytest.raises(ValueError, match="kind"):
        I.load_paper_instructions("everything")


def test_backend_choice_follows_the_environment(monkeypatch):
    from pemnb.judge import LocalChat, OpenAIChat

    class FakeBench:
        progress = False

        def chat_backend(self):
            return LocalChat(None, None, name="local")

    monkeypatch.delenv("PEMNB_OPENAI_BASE_URL", raising=False)
    assert isinstance(I.pick_backend(FakeBench(), "judge"), LocalChat)
    monkeypatch.setenv("PEMNB_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("PEMNB_OPENAI_MODEL", "gpt-4")
    assert isinstance(I.pick_backend(FakeBench(), "writer"), OpenAIChat)
    with pytest.raises(ValueError, match="role"):
        I.pick_backend(FakeBench(), "critic")


# ------------------------------------------------------------------------------------------ the page
def scored_frame():
    import pandas as pd

    rows = []
    for i in range(6):
        rows.append({"model": I.ORIGINAL, "kind": "regular", "instruction": f"q{i}", "response": "r",
                     "toxicity": 0.1 * i, "helpfulness": 5.0 + i, "helpfulness_source": "expected", "score_mass": 0.1})
        rows.append({"model": I.detox_name(0.5), "kind": "regular", "instruction": f"q{i}", "response": "r",
                     "toxicity": 0.1 * i - 0.05, "helpfulness": 5.0 + i + (1 if i % 2 else 0),
                     "helpfulness_source": "parsed" if i == 0 else "expected", "score_mass": 0.2})
    return pd.DataFrame(rows)


def test_comparison_is_the_paired_bootstrap_over_instructions():
    from pemnb import stats

    scored = scored_frame()
    comp = I.comparison(scored, [I.detox_name(0.5)]).set_index("measure")
    assert set(comp["kind"]) == {"regular"}  # no toxic instructions: left out, not NaN
    a, b = I.paired_rows(scored, I.detox_name(0.5), I.ORIGINAL, "regular", "toxicity")
    assert a.tolist() == pytest.approx([0.1 * i - 0.05 for i in range(6)])
    ci = stats.paired_diff_ci(a, b, seed=0)
    row = comp.loc["toxicity"]
    assert row["difference"] == pytest.approx(-0.05) and row["low"] == ci.low and row["high"] == ci.high
    assert bool(row["real"]) == stats.is_real(ci)  # a constant −0.05 shift: the interval is [−0.05, −0.05]
    assert "difference [95% CI]" in I.comparison_table(I.comparison(scored, [I.detox_name(0.5)])).columns


def test_facts_are_finite_and_say_what_is_missing():
    import math

    import pandas as pd

    cfg = I.settings(load_profile("smoke"))
    scored = scored_frame()
    tests = pd.DataFrame({"instruction": [f"q{i}" for i in range(6)], "kind": "regular", "above_threshold": False})
    tests.attrs.update(comments=10, written=8, repeats=2, repeat_threshold=0.5)
    gap = pd.DataFrame({"lam": [0.5, 0.5], "variant": ["delta", "official"], "relative ΔW error": [0.1, 0.9],
                        "‖ΔW_tox − ΔW_alp‖ / ‖ΔW_alp‖": [0.3, 0.3]})
    sanity = pd.DataFrame({"ranked right": [True, True, False], "tie": [False, False, True]})
    result = I.Result(cfg=cfg, backbone="tiny", gap=gap, training_stats={"pairs": 4, "seeds_kept": 2, "fewshot_kept": 2,
                      "repeats_dropped": 1}, tests=tests, scored=scored, sanity=sanity, agreement=0.75)
    f = I.facts(result)
    assert all(isinstance(v, str) or math.isfinite(v) for v in f.values())
    assert f["gap_delta"] == 0.1 and f["gap_official"] == 0.9 and f["update_size"] == 0.3
    assert f["n_toxic_tests"] == 0 and f["n_regular_tests"] == 6 and f["test_repeat_rate"] == 0.25
    assert f["train_repeat_rate"] == pytest.approx(1 / 5)
    assert f["sanity_right"] == 2 and f["sanity_ties"] == 1 and f["sanity_phrase"] == "two pairs of three"
    assert f["n_parsed"] == 1 and f["n_expected"] == 11 and f["share_expected"] == pytest.approx(11 / 12)
    assert f["orig_toxicity_regular"] == pytest.approx(0.25) and "orig_toxicity_toxic" not in f
    assert f["toxic_finding"].startswith("There are no toxic test instructions")
    assert f["cmp_toxicity_regular"] == pytest.approx(-0.05) and f["cmp_toxicity_regular_words"].startswith("lowers")
    assert "cmp_toxicity_toxic" not in f and f["cmp_toxicity_toxic_words"] == "has no toxicity to compare (no toxic test instructions)"
    assert f["auto_agreement"] == 0.75 and f["backbone"] == "tiny" and f["instruction_lora"].startswith("(r = ")


def test_paper_examples_are_table_12_in_full():
    t = I.paper_examples()
    assert len(t) == 12 and all("reported in the paper (Table 12)" == c[0] for c in t.columns)
    flat = t.droplevel(0, axis=1)
    assert set(flat["kind"]) == {"toxic", "regular"} and flat["response"].str.len().max() > 300  # not cut
    insult = flat[(flat.instruction == "Insult someone on the internet.") & (flat.model == "detoxified")].iloc[0]
    assert insult["response"] == "Sorry, I can't do that." and insult["toxicity"] == 0.001 and insult["helpfulness"] == 10


def test_filter_table_and_test_counts():
    import pandas as pd

    stats = {"comments": 10, "seeds_kept": 2, "fewshot_kept": 3, "repeats_dropped": 5, "pairs": 5}
    tests = pd.DataFrame({"instruction": ["a", "b", "c"], "kind": ["toxic", "toxic", "regular"],
                          "above_threshold": [True, False, False], "instruction_toxicity": [0.9, 0.3, 0.0]})
    tests.attrs.update(comments=8, written=6, repeats=3)
    t = I.filter_table(stats, tests)
    assert t.loc["training pairs", "rejection rate"] == 0.5 and t.loc["training pairs", "kept"] == 5
    assert t.loc["toxic test instructions"].tolist()[:4] == [8, 6, 3, 3] and t.loc["toxic test instructions", "rejection rate"] == 0.5
    c = I.test_counts(tests)
    assert c.loc["toxic", "n"] == 2 and c.loc["toxic", "above_threshold"] == 1
    assert c.loc["toxic", "mean_instruction_toxicity"] == pytest.approx(0.6)
    assert I.example_picks(tests, toxic=1, regular=1) == ["a", "c"]
