"""The paper dry run: every chapter's pipeline at the `paper` profile, offline, in seconds.

What is the paper's: the profile (its backbones' model classes, dtype, λ grids, batch sizes, learning
rates), every chapter's paper settings (prompts, answer constraints, templates, decoding, LoRA configs,
micro-batches) and the code paths they take (RoBERTa classification, T5 generation with constrained
answers, GPT-2 with Conv1D LoRA, LLaMA in bf16 with Alpaca-LoRA's published adapter folder).
What is cut: the hub is replaced by tiny random models of the same classes and by stand-ins for the
gated instruction files (tests/tiny_hub.py, read through $PEMNB_HUB_DIR by the same loading code), the
data by a $PEMNB_DATA_DIR of the shipped data/ plus small stand-ins, made of shipped rows, for the
splits the paper reads from the hub (MNLI train, Civil Comments train, WikiText-103, Yelp and Amazon
polarity); steps, rows, samples and generated tokens are cut. Only the cuts are overridden below;
everything else, data splits and sources included, is the paper profile's.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pemnb import arithmetic as A
from pemnb import sweep as SW
from pemnb.profiles import load_profile

TIMES: dict[str, float] = {}

# The cuts, per chapter (everything not named here is the paper profile's own setting).
CUTS = {
    "distribution": {
        # three of the eight tasks: a 2-class task with a train split (RTE), the regression task (STS-B)
        # and the 3-class task (MNLI)
        "tasks": ("mnli", "rte", "stsb"),
        "steps": {"fft": 1, "lora": 1, "ia3": 1},
        "min_eval_rows": 40, "select_max": 12, "eval_max": 12,
    },
    "multitask": {
        "train_rows": {"mnli": 40, "rte": 40}, "eval_rows": {"mnli": 10, "rte": 10},
        "steps": 1, "parity_rows": 3, "format_probe_rows": 4,
    },
    "03_unlearning": {
        "n_train": 64, "n_heldout": 8, "steps": {"fft": 1, "lora": 1, "ia3": 1}, "n_samples": 4,
        "max_new_tokens": 6, "ppl_tokens": 1500,
    },
    "domain_transfer": {"dev_rows": 6},
    "05_instruction_detox": {
        "heldout_comments": 8, "toxic_steps": 1, "response_tokens": 6, "judge_tokens": 3,
    },
    "merge_methods": {"cost_repeat": 1},
}


def _with_steps(s: dict, steps: int) -> dict:
    """Multitask hyperparameters with the paper's lr and batch, and `steps` steps."""
    return {t: {k: {**hp, "steps": steps} for k, hp in kinds.items()} for t, kinds in s.items()}


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """The paper profile with the cuts, on the CPU, with $PEMNB_HUB_DIR pointing at the tiny models."""
    import tiny_hub
    from pemnb import multitask as MT
    from pemnb.paths import data_dir

    if data_dir() is None or not (data_dir() / "glue").exists():
        pytest.fail(f"the shipped data folder is missing at {data_dir()}")
    base = tmp_path_factory.getbasetemp()
    hub = tiny_hub.build(base / "tiny-hub", data_dir())
    tiny_hub.build_gated(hub, data_dir())
    data = tiny_hub.build_data(base / "paper-data", data_dir())
    saved = {k: os.environ.get(k) for k in ("PEMNB_HUB_DIR", "PEMNB_DATA_DIR")}
    os.environ.update({"PEMNB_HUB_DIR": str(hub), "PEMNB_DATA_DIR": str(data)})
    chapters = {k: dict(v) for k, v in CUTS.items()}
    mt = chapters["multitask"]
    mt["hparams"] = _with_steps(MT.PRESETS["paper"]["hparams"], mt.pop("steps"))
    # On the CPU unless $PEMNB_DEVICE says otherwise (PEMNB_DEVICE=cuda runs the same dry run on a GPU).
    device = {} if os.environ.get("PEMNB_DEVICE") else {"device": "cpu"}
    profile = load_profile("paper", train_size=16, eval_size=16, steps=2, chapters=chapters, **device)
    yield profile
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _timed(request):
    t0 = time.perf_counter()
    yield
    TIMES[request.node.name] = time.perf_counter() - t0


@pytest.fixture
def launched(paper, request, monkeypatch):
    """Trains the test's chapter with `python -m pemnb.launch`'s function first; then any training in
    the chapter's own pipeline fails the test: the book must find every module in the cache."""
    import pemnb.budget
    import pemnb.classify
    import pemnb.generative
    from pemnb import launch

    chapter = request.node.name.split("_")[1]
    names = launch.train_chapter(chapter, paper, progress=False)
    assert names or chapter == "06"

    def no_training(*a, **k):
        raise AssertionError(f"chapter {chapter} trained a module that pemnb.launch had put in the cache")

    monkeypatch.setattr(pemnb.classify, "train_module", no_training)
    monkeypatch.setattr(pemnb.generative, "train_module", no_training)
    monkeypatch.setattr(pemnb.budget, "train_module", no_training)  # chapter 02's modules train with a curve
    return names


def test_00_module_arithmetic(paper, launched):
    from pemnb.classify import ClassifierBench
    from pemnb.launch import chapter00_data

    train, evalset, half_a, half_b = chapter00_data(paper)
    benches = {kind: ClassifierBench(paper, "glue/sst2", kind, progress=False) for kind in ("lora", "ia3")}
    assert type(benches["lora"].model.base_model.model).__name__ == "RobertaForSequenceClassification"
    batches = benches["lora"].batches(evalset)
    for kind, bench in benches.items():
        m = bench.train(train, tag="sst2")
        rows = bench.evaluate_many({"identity": bench.identity(), "trained": m, "negated": A.negate(m, kind),
                                    "ablated": A.ablate(m, kind)}, batches)
        assert {r["module"] for r in rows} == {"identity", "trained", "negated", "ablated"}
        sweep = SW.sweep(lambda lam: A.negate(m, kind, lam), paper.lam_grid, bench.scorer(batches), progress=False)
        assert len(sweep) == 51  # the paper's grid: 0 to 1 by 0.02
        a = bench.train(half_a, tag="sst2-half-a", steps=paper.steps // 2)
        b = bench.train(half_b, tag="sst2-half-b", steps=paper.steps // 2)
        merged = SW.sweep(lambda lam: A.merge(a, b, lam, kind), paper.lam_grid, bench.scorer(batches), progress=False)
        assert all(0 <= r["accuracy"] <= 1 for r in merged)
        if kind == "lora":
            assert A.cross_term_error(a, b, 0.5, bench.scaling()) >= 0


def test_01_distribution(paper, launched):
    from pemnb import distribution as D

    settings = D.settings(paper)
    assert settings.lam_grid == paper.lam_grid and settings.max_length == 128
    result = D.run_chapter(paper, settings, progress=False)
    assert set(result.task_data) | set(result.skipped) == set(CUTS["distribution"]["tasks"])
    assert set(result.rows["kind"]) == {"fft", "lora", "ia3"}
    assert result.sweep.groupby(["task", "kind", "split"]).size().eq(51).all()
    D.results_table(result.rows)
    D.sweep_figure(result.sweep, result.rows)
    D.gains(result.rows)


def test_02_multitask(paper, launched):
    from pemnb import multitask as M

    s = M.settings(paper)
    assert s.backbone == "t5-base" and s.lora_r == 32 and len(s.lam_grid) == 51
    bench = M.make_bench(paper, "lora", s, progress=False)
    assert type(bench.model.base_model.model).__name__ == "T5ForConditionalGeneration"
    assert bench.profile.micro_batch == 32  # MNLI's 128 in 4 accumulated passes
    del bench
    result = M.run_chapter(paper, s, progress=False)
    for ids in result.answer_tokens.values():  # the constrained answers are single tokens: one-pass scoring is exact
        assert all(len(v) == 1 for v in ids.values()), ids
    assert set(result.probe["format"]) == {"raw prompt"}  # T5: no chat template
    assert (result.parity["agreement (answer + EOS)"] == 1.0).all(), result.parity
    summary = M.summary(result)
    assert set(summary.index.get_level_values("kind")) == {"base", "fft", "lora", "ia3"}
    assert set(result.curves["kind"]) == {"fft", "lora", "ia3"}
    assert M.facts(result)["n_modules"] == 6


def test_03_unlearning(paper, launched):
    from pemnb import unlearning as U
    from pemnb.evaluate import load_toxicity_scorer

    cfg = U.settings(paper)
    assert cfg.batch == {"fft": 32, "lora": 96, "ia3": 96} and cfg.ppl_max_length == 1024
    train_texts, held, counts = U.toxic_comments(cfg, paper.seed)
    scorer = load_toxicity_scorer("profanity")  # Detoxify's checkpoint is a download
    lab = U.UnlearningLab(paper, scorer, U.wikitext(cfg), cfg=cfg, progress=False)
    result = lab.run(train_texts)  # train, measure, sweep λ, ablate
    assert type(lab.bench("lora").model.base_model.model).__name__ == "GPT2LMHeadModel"
    for kind in cfg.kinds:
        assert result.chosen[kind] in cfg.lam_grid
        assert [r["lam"] for r in result.sweep if r["kind_id"] == kind] == list(cfg.lam_grid)
    table = U.summary_table(result.table_rows(), result.base, scorer.name)
    assert len(table) > 0 and np.isfinite(result.base["ppl"])
    assert U.facts(result)["n_samples"] == cfg.n_samples


def test_04_domain_transfer(paper, launched):
    from pemnb import domain_transfer as dt

    S = dt.settings(paper)
    assert S.backbones == ("t5-base", "t5-small") and S.template == "{text}" and S.chunk == 128
    result = dt.run(paper, S, progress=False)
    df = result.rows
    assert set(df["backbone"]) == {"t5-base", "t5-small"} and set(df["kind"]) == {"fft", "lora", "ia3"}
    analogy = df[df["method"] == "analogy"]
    assert sorted(set(analogy["lam"])) == sorted(S.lam_grid)
    dt.transfer_table(df)
    dt.gains_table(df, result.labels)
    for b in S.backbones:
        dt.sweep_figure(df, b, labels=result.labels)
    assert dt.facts(result)["n_cases"] == 6


def test_05_instruction_detox(paper, launched):
    from pemnb import instruct as I
    from pemnb import pairwise
    from pemnb.evaluate import load_toxicity_scorer

    cfg = I.settings(paper)
    assert cfg.alpaca_adapter == "tloen/alpaca-lora-7b" and cfg.lora_r == 16 and cfg.num_beams == 4
    bench = I.InstructBench(paper, cfg, progress=False)
    assert type(bench.model.base_model.model).__name__ == "LlamaForCausalLM"
    frozen = bench.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert frozen.dtype == torch.bfloat16  # the paper profile's dtype for LLaMA-7B
    lora_a = bench.model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    assert lora_a.dtype == torch.float32 and bench.profile.micro_batch == 4  # trained weights stay fp32
    writer = judge = I.pick_backend(bench, "writer")
    scorer = load_toxicity_scorer("profanity")
    train_comments, held_comments = I.comment_pools(cfg, paper.seed)
    alpaca_rows, alpaca_held = I.alpaca_pools(cfg, paper.seed)
    records, stats = bench.training_pairs(writer, train_comments)
    if not records:  # a tiny random writer rarely writes a usable instruction: use the comments' own
        pytest.fail(f"self-instruct wrote nothing usable: {stats}")
    theta_alp = bench.alpaca_module(alpaca_rows)  # Alpaca-LoRA's published adapter folder
    theta_tox = bench.toxic_module(records, theta_alp)
    assert A.norms(A.toxic_update(theta_alp, theta_tox)) > 0
    seen_in_training = [r["instruction"] for r in records] + [r["instruction"] for r in alpaca_rows]
    tests = bench.test_set(writer, scorer, held_comments, [r["instruction"] for r in alpaca_held],
                           exclude=seen_in_training)
    I.check_disjoint(seen_in_training, list(tests["instruction"]))
    # the paper's test files get the columns the offline set has (the notebook tabulates them)
    assert {"instruction_toxicity", "above_threshold"} <= set(tests.columns)
    assert set(tests["kind"]) == {"toxic", "regular"}
    states = {"original θ_alp": theta_alp, "toxic θ_tox": theta_tox}
    for lam in cfg.lams:
        states[f"detoxified λ={lam}"] = A.negate_continued(theta_alp, theta_tox, lam)
    scored = bench.score(bench.respond_all(states, tests), scorer, judge)
    results = I.summary(scored, list(states))
    assert list(results.index) == list(states)
    pairs = pairwise.make_pairs(list(tests["instruction"]),
                                {"original": list(scored[scored.model == "original θ_alp"]["response"]),
                                 "detoxified": list(scored[scored.model == "detoxified λ=0.5"]["response"])},
                                seed=paper.seed, kinds=list(tests["kind"]))
    assert len(pairs) == len(tests)

    # A published adapter is only used at its own r, α and targets.
    import json
    import shutil

    from pemnb.backbones import hub_source

    other = Path(os.environ["PEMNB_HUB_DIR"]).parent / "alpaca-lora-alpha-32"
    shutil.copytree(hub_source(cfg.alpaca_adapter), other, dirs_exist_ok=True)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 32}))
    bench.cfg = cfg.replace(alpaca_adapter=str(other))
    with pytest.raises(ValueError, match="lora_alpha"):
        bench.alpaca_module(alpaca_rows)


def test_05_on_a_gpu_without_bf16(paper):
    """The same chapter with the fp16 fallback: frozen LLaMA in fp16, θ_tox trained under a loss scale."""
    import dataclasses

    from pemnb import instruct as I

    profile = dataclasses.replace(paper, dtype="fp16")
    cfg = I.settings(profile)
    bench = I.InstructBench(profile, cfg, progress=False)
    assert bench.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.float16
    records, _ = bench.training_pairs(None, [])  # the paper's (stand-in) file
    theta_alp = bench.alpaca_module()
    theta_tox = bench.toxic_module(records, theta_alp)
    assert A.norms(A.toxic_update(theta_alp, theta_tox)) > 0
    assert len(bench.respond(theta_tox, [records[0]["instruction"]])) == 1


def test_06_merge_methods(paper, launched):
    from pemnb import merge_chapter as MC

    settings = MC.settings(paper)
    result = MC.run_chapter(paper, settings, progress=False)
    assert set(result.sweep["method"]) == set(MC.SWEPT)
    table = MC.summary(result.sweep, result.costs)
    MC.recommend(table, settings.tolerance)


def test_zz_report_times():
    """Prints how long each chapter's dry run took (pytest -s shows it)."""
    print("\npaper dry run, seconds per chapter:", {k: round(v, 1) for k, v in TIMES.items()})
