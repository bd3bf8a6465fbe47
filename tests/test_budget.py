"""pemnb.budget: a learning curve is one training run, scored part-way through it."""
import pytest
import torch

from pemnb import data
from pemnb.budget import learning_curve
from pemnb.classify import ClassifierBench
from pemnb.evaluate import classify
from pemnb.modules import read_state, write_state
from pemnb.profiles import load_profile
from pemnb.train import train_module


def test_the_curve_ends_where_one_uninterrupted_run_ends(shared_data, tmp_path):
    profile = load_profile("smoke", train_size=32, eval_size=16)
    train = data.subsample(data.load("glue/sst2", "train"), 32, seed=0)
    ev = data.subsample(data.load("glue/sst2", "validation"), 16, seed=1)
    bench = ClassifierBench(profile, "glue/sst2", "lora", progress=False)
    examples, batches = bench.examples(train), bench.batches(ev)
    kw = dict(lr=1e-2, batch_size=8, seed=0, pad_token_id=bench.tokenizer.pad_token_id)
    seen = []
    rows = learning_curve(bench.model, examples, lambda m: seen.append(1) or classify(m, batches, "glue/sst2"),
                          points=[2, 4, 6], **kw)
    curve_end = read_state(bench.model)
    assert [r["step"] for r in rows] == [2, 4, 6] and len(seen) == 3
    assert all(0 <= r["accuracy"] <= 1 and r["loss"] > 0 for r in rows)
    write_state(bench.model, bench.init_state)
    train_module(bench.model, examples, steps=6, progress=False, **kw)
    straight = read_state(bench.model)
    assert all(torch.allclose(curve_end[k], straight[k], atol=1e-6) for k in straight)


@pytest.mark.parametrize("points", [[], [0, 4], [4, 4]])
def test_bad_points_are_refused(points):
    with pytest.raises(ValueError, match="points"):
        learning_curve(None, [], lambda m: {}, points=points, lr=1e-3, batch_size=1, seed=0, pad_token_id=0)
