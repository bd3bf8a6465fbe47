"""The λ-sweep engine: in place equals a fresh model per λ; dense updates applied and restored exactly."""
import functools

import numpy as np
import pytest
import torch

from pemnb import merge_methods as M
from pemnb.backbones import load_backbone
from pemnb.evaluate import EvalBatches
from pemnb.modules import attach, lora_scaling, read_state, write_state
from pemnb.sweep import apply_and_evaluate, delta_applied, in_place, restored, sweep

R, ALPHA = 4, 8


def fresh(name="smoke-bert", r=R, alpha=ALPHA):
    model, tok = load_backbone(name, "classification", 2, seed=0, device="cpu")
    return attach(model, "lora", r=r, alpha=alpha, init_seed=0), tok


def random_state(model, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: 0.5 * torch.randn(v.shape, generator=g) for k, v in read_state(model).items()}


@pytest.fixture(scope="module")
def setup():
    model, tok = fresh()
    g = np.random.default_rng(0)
    examples = [{"input_ids": [tok.cls_token_id] + g.integers(1000, 3000, n).tolist() + [tok.sep_token_id],
                 "attention_mask": [1] * (n + 2), "labels": int(g.integers(0, 2))}
                for n in g.integers(3, 20, 24)]
    batches = EvalBatches(examples, tok.pad_token_id, batch_size=8)
    return model, batches, [random_state(model, 1), random_state(model, 2)]


def metrics(model, batches):
    logits = batches.logits(model)
    return {"accuracy": float((logits.argmax(-1) == batches.labels).mean()),
            "mean_logit": float(logits[:, 1].mean()), "logit0": float(logits[0, 0])}


def test_in_place_sweep_equals_a_fresh_model_per_lambda(setup):
    model, batches, (s1, s2) = setup
    grid = [0.0, 0.3, 1.0]
    compose = lambda lam: M.compose("paper", [s1, s2], [lam, 1 - lam])
    evaluate = functools.partial(metrics, batches=batches)
    rows = sweep(compose, grid, in_place(model, evaluate), progress=False, task="toy")
    assert [r["lam"] for r in rows] == grid and all(r["task"] == "toy" for r in rows)
    for row in rows:
        other, _ = fresh()
        write_state(other, compose(row["lam"]))
        want = evaluate(other)
        for k, v in want.items():
            assert row[k] == pytest.approx(v, rel=1e-5, abs=1e-6)
    assert len({r["mean_logit"] for r in rows}) == 3  # the λs really gave different models


def test_restored_gives_the_model_back_the_module_it_had(setup):
    model, batches, (s1, s2) = setup
    write_state(model, s1)
    with restored(model) as writer:
        rows = sweep(lambda lam: M.compose("linear", [s1, s2], [lam, 1 - lam]), [0.5],
                     in_place(model, functools.partial(metrics, batches=batches), writer), progress=False, timings=True)
        assert not torch.equal(read_state(model)[next(iter(s1))], s1[next(iter(s1))])  # the sweep wrote θ(λ)
    after = read_state(model)
    assert all(torch.equal(after[k], s1[k]) for k in s1)
    assert rows[0]["compose_s"] >= 0 and rows[0]["eval_s"] > 0


def test_a_dense_update_computes_like_its_rank_concatenation(setup):
    """task_arith applied to the base weights == cat written into a LoRA of rank 2r (α scaled to keep s)."""
    model, batches, (s1, s2) = setup
    s = lora_scaling(model)
    weights = [0.6, -0.8]
    dense = M.task_arith([s1, s2], weights, scaling=s)
    got = apply_and_evaluate(model, dense, lambda m: {"logits": batches.logits(m)})["logits"]
    big, _ = fresh(r=2 * R, alpha=int(s * 2 * R))
    write_state(big, M.cat([s1, s2], weights))
    np.testing.assert_allclose(got, batches.logits(big), rtol=1e-4, atol=1e-5)


def test_delta_applied_restores_weights_bit_for_bit(setup):
    model, batches, (s1, s2) = setup
    write_state(model, s2)
    before_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = batches.logits(model)
    with delta_applied(model, M.ties([s1, s2], [0.5, 0.5], scaling=lora_scaling(model), density=0.5)):
        assert not np.allclose(batches.logits(model), before)
    for n, p in model.named_parameters():
        assert torch.equal(p, before_params[n]), n
    np.testing.assert_array_equal(batches.logits(model), before)


def test_delta_applied_restores_after_an_error(setup):
    model, _, (s1, _) = setup
    write_state(model, s1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"):
        with delta_applied(model, M.dense(s1, lora_scaling(model))):
            raise RuntimeError("boom")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_dense_update_on_a_transposed_conv1d_model():
    """GPT-2 stores weights as (in, out) (fan_in_fan_out): one module as ΔW must equal the module itself."""
    model, tok = load_backbone("smoke-gpt2", "classification", 2, seed=0, device="cpu")
    model = attach(model, "lora", r=R, alpha=ALPHA, init_seed=0)
    state = random_state(model, 3)
    ids = torch.tensor([[5, 60, 700, 80, 9000, 11]])
    write_state(model, state)
    with torch.no_grad():
        want = model(input_ids=ids).logits
        write_state(model, {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in state.items()})
        with delta_applied(model, M.dense(state, lora_scaling(model))):
            got = model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_bad_input_errors(setup):
    model, batches, (s1, s2) = setup
    evaluate = functools.partial(metrics, batches=batches)
    with pytest.raises(ValueError, match="grid is empty"):
        sweep(lambda lam: s1, [], in_place(model, evaluate), progress=False)
    with pytest.raises(ValueError, match="no LoRA on"):
        with delta_applied(model, M.DenseDelta({"nowhere.query": torch.zeros(2, 2)})):
            pass
    with pytest.raises(ValueError, match="shape"):  # a rank-2r state does not fit the rank-r model
        sweep(lambda lam: M.cat([s1, s2], [lam, 1 - lam]), [0.5], in_place(model, evaluate), progress=False)
    with pytest.raises(TypeError, match="DenseDelta"):
        with delta_applied(model, s1):
            pass
