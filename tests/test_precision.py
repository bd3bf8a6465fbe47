"""bfloat16 autocast: opt-in, exact no-op when off, measured against float32 by bf16_agreement."""
import dataclasses

import numpy as np
import pytest
import torch

from pemnb import precision
from pemnb.backbones import load_backbone
from pemnb.evaluate import EvalBatches
from pemnb.modules import attach, read_state
from pemnb.profiles import load_profile
from pemnb.train import train_module


def toy_examples(tok, n=24):
    texts = [("good " * (1 + i % 5)).strip() if i % 2 else ("bad movie " * (1 + i % 7)).strip() for i in range(n)]
    enc = tok(texts, truncation=True, max_length=24)
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": i % 2}
            for i in range(n)]


def fresh():
    model, tok = load_backbone("smoke-bert", "classification", seed=0, device="cpu")
    return attach(model, "lora", r=4, alpha=8, init_seed=0), tok


def test_autocast_off_is_float32_exactly_and_on_changes_only_rounding():
    model, tok = fresh()
    batches = EvalBatches(toy_examples(tok), tok.pad_token_id, 8)
    full = batches.logits(model)
    with precision.autocast_bf16("cpu", enabled=False):
        assert np.array_equal(batches.logits(model), full)
    half = EvalBatches(toy_examples(tok), tok.pad_token_id, 8, autocast_bf16=True).logits(model)
    assert half.dtype == np.float32 and not np.array_equal(half, full)
    assert np.abs(half - full).max() < 0.05 * np.abs(full).max() + 0.05


def test_bf16_agreement_reports_both_sides_and_restores_the_batches():
    model, tok = fresh()
    batches = EvalBatches(toy_examples(tok), tok.pad_token_id, 8)
    out = precision.bf16_agreement(model, batches, repeat=2)
    assert out["rows"] == 24 and 0.0 <= out["agreement"] <= 1.0
    assert out["max_abs_logit_diff"] > 0 and out["fp32_s"] > 0 and out["bf16_s"] > 0
    assert out["speedup"] == pytest.approx(out["fp32_s"] / out["bf16_s"])
    assert batches.autocast_bf16 is False
    with pytest.raises(ValueError, match="repeat"):
        precision.bf16_agreement(model, batches, repeat=0)


def test_training_under_autocast_learns_in_float32_parameters():
    runs = {}
    for bf16 in (False, True):
        model, tok = fresh()
        before = read_state(model)
        result = train_module(model, toy_examples(tok), steps=6, lr=5e-3, batch_size=8, seed=0,
                              pad_token_id=tok.pad_token_id, progress=False, autocast_bf16=bf16)
        after = read_state(model)
        assert all(v.dtype == torch.float32 for v in after.values())
        assert any(not torch.equal(before[k], after[k]) for k in before)
        runs[bf16] = (result.losses, after)
    # same data and seed: the bf16 run follows the fp32 one closely but not bit for bit
    assert runs[True][0] != runs[False][0]
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=0.05, atol=0.05)


def test_the_profile_field_reaches_the_bench_and_its_cache_keys(tmp_path):
    from pemnb.cache import Cache
    from pemnb.classify import ClassifierBench
    from pemnb import data

    p = load_profile("smoke")
    assert p.autocast_bf16 is False and "bfloat16" not in p.describe()
    on = dataclasses.replace(p, autocast_bf16=True)
    assert "bfloat16 autocast" in on.describe()
    ds = data.subsample(data.load("glue/sst2", "validation"), 8, seed=0)
    keys = {}
    for prof in (p, on):
        bench = ClassifierBench(prof, "glue/sst2", "lora", cache=Cache(tmp_path), progress=False)
        b = bench.batches(ds)
        assert b.autocast_bf16 is prof.autocast_bf16
        keys[prof.autocast_bf16] = (b.cache_key, bench.module_key(ds, "t", 0, 2, 1e-3))
    assert "autocast_bf16" not in keys[False][0] and "autocast_bf16" not in keys[False][1]
    assert keys[True][0]["autocast_bf16"] and keys[True][1]["autocast_bf16"]


def test_auto_follows_the_hardware_and_bad_settings_are_refused(monkeypatch):
    assert precision.resolve(True, "cpu") is True and precision.resolve(False, "cpu") is False
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert precision.resolve("auto", "cpu") is False
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert precision.resolve("auto", "cpu") is True
    with pytest.raises(ValueError, match="autocast_bf16"):
        precision.resolve("yes", "cpu")
    small = load_profile("small")
    assert small.autocast_bf16 == "auto" and "where the hardware has it" in small.describe()
