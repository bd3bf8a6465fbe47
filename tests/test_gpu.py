"""GPU code paths: the same tiny computations on CUDA and on the CPU agree. Skipped without a GPU."""
import numpy as np
import pytest
import torch

from pemnb import arithmetic as A
from pemnb.backbones import load_backbone
from pemnb.evaluate import EvalBatches, constrained_generate, perplexity, score_choices
from pemnb.modules import attach, read_state, write_state
from pemnb.train import train_module

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def examples(tok, n=32):
    enc = tok([("good " * (1 + i % 4)) if i % 2 else ("bad " * (1 + i % 6)) for i in range(n)])
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": i % 2}
            for i in range(n)]


@pytest.mark.parametrize("kind", ["lora", "ia3", "fft"])
def test_training_on_cuda_and_in_place_evaluation_match_the_cpu(kind):
    models = {}
    for device in ("cpu", "cuda"):
        model, tok = load_backbone("smoke-bert", "classification", seed=0, device=device)
        models[device] = attach(model, kind, r=4, alpha=8, init_seed=0)
    ex = examples(tok)
    before = read_state(models["cuda"])
    res = train_module(models["cuda"], ex, steps=5, lr=1e-3, batch_size=8, seed=0,
                       pad_token_id=tok.pad_token_id, progress=False)
    assert next(models["cuda"].parameters()).device.type == "cuda"  # trained where it was loaded
    assert next(models["cpu"].parameters()).device.type == "cpu"
    assert all(np.isfinite(res.losses))
    theta = read_state(models["cuda"])  # always a CPU copy
    assert all(v.device.type == "cpu" for v in theta.values()) and A.max_abs_diff(theta, before) > 0
    composed = A.negate(theta, kind, 0.5)
    logits = {}
    for device, model in models.items():
        write_state(model, composed)  # the same CPU state written into either live model
        logits[device] = EvalBatches(ex, tok.pad_token_id, 16, torch.device(device)).logits(model)
    np.testing.assert_allclose(logits["cpu"], logits["cuda"], atol=1e-4)


def test_answer_scoring_generation_and_perplexity_on_cuda():
    model, tok = load_backbone("smoke-llama", "causal_lm", seed=0, device="cuda")
    prompts = [f"does {i} imply {i + 1} ? answer yes or no ." for i in range(10)]
    s = score_choices(model, tok, prompts, ["yes", "no", "maybe"])
    assert constrained_generate(model, tok, prompts, ["yes", "no", "maybe"]) == s.argmax(1).tolist()
    cpu_model, _ = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu")
    np.testing.assert_allclose(score_choices(cpu_model, tok, prompts, ["yes", "no", "maybe"]), s, atol=1e-3)
    text = "a b c d e f g h " * 20
    assert perplexity(model, tok, text, 32, 16) == pytest.approx(perplexity(cpu_model, tok, text, 32, 16), rel=1e-3)
