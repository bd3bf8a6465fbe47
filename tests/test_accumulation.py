"""Gradient accumulation: passes of a micro-batch give the gradient of the whole batch in one pass."""
import pytest
import torch

from pemnb.backbones import load_backbone
from pemnb.generative import prompt_answer_examples
from pemnb.modules import attach, read_state
from pemnb.train import accumulate_gradients, accumulation_steps, loss_units, pad_collate, train_module


def _classifier():
    model, tok = load_backbone("smoke-bert", "classification", seed=0, device="cpu")
    model = attach(model, "lora", r=4, alpha=8, init_seed=0)
    texts = [("good " * (1 + i % 5)).strip() if i % 2 else ("bad " * (1 + i % 7)).strip() for i in range(10)]
    enc = tok(texts, truncation=True, max_length=16)
    return model, tok, [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                         "labels": i % 2} for i in range(10)]


def _generative(name):
    model, tok = load_backbone(name, "seq2seq" if name == "smoke-t5" else "causal_lm", seed=0, device="cpu")
    model = attach(model, "ia3", init_seed=0)
    prompts = [f"question {'a ' * (i % 6)}number {i}" for i in range(10)]
    answers = ["yes" if i % 3 else "no maybe so" for i in range(10)]
    return model, tok, prompt_answer_examples(tok, prompts, answers, 32, encoder_decoder=name == "smoke-t5")


def _grads(model, tok, examples, micro):
    model.eval()  # no dropout: the two gradients must see the same function
    model.zero_grad(set_to_none=True)
    enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    loss = accumulate_gradients(model, examples, list(range(len(examples))), collate=pad_collate(tok.pad_token_id),
                                device="cpu", micro_batch_size=micro, encoder_decoder=enc_dec)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("build", [_classifier, lambda: _generative("smoke-llama"), lambda: _generative("smoke-t5")],
                         ids=["classification", "decoder", "encoder-decoder"])
def test_accumulated_gradient_equals_the_whole_batch_gradient(build):
    model, tok, examples = build()
    loss_one, one = _grads(model, tok, examples, None)
    loss_acc, acc = _grads(model, tok, examples, 3)  # 10 rows: passes of 3, 3, 3 and 1 (unequal weights)
    assert one.keys() == acc.keys() and one
    for name in one:
        torch.testing.assert_close(acc[name], one[name], rtol=1e-5, atol=1e-7, msg=name)
    assert loss_acc == pytest.approx(loss_one, rel=1e-5)
    # Weighting passes equally instead (the naive accumulation) would give a different gradient here.
    naive = {n: torch.zeros_like(g) for n, g in one.items()}
    model.zero_grad(set_to_none=True)
    for part in ([0, 1, 2], [3, 4, 5], [6, 7, 8], [9]):
        batch = pad_collate(tok.pad_token_id)([examples[i] for i in part])
        (model(**batch).loss / 4).backward()
    naive = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert max(float((naive[n] - one[n]).abs().max()) for n in one) > 1e-4


def test_loss_units_count_what_the_model_averages():
    assert loss_units({"labels": 1}) == 1
    assert loss_units({"labels": [-100, -100, 5, 6]}) == 2           # decoder: shifted, first label dropped
    assert loss_units({"labels": [5, -100, 6]}) == 1
    assert loss_units({"labels": [5, -100, 6]}, encoder_decoder=True) == 2
    assert accumulation_steps(128, 16) == 8 and accumulation_steps(128, 16, processes=4) == 2
    assert accumulation_steps(96, None) == 1 and accumulation_steps(10, 3) == 4


def test_training_with_micro_batches_gives_the_same_module():
    from pemnb.modules import write_state

    model, tok, examples = _classifier()
    for m in model.modules():  # dropout draws differ between one pass and four: switch it off
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    init = read_state(model)
    out = {}
    for micro in (None, 3):
        write_state(model, init)
        train_module(model, examples, steps=3, lr=5e-3, batch_size=8, seed=0, pad_token_id=tok.pad_token_id,
                     progress=False, micro_batch_size=micro)
        out[micro] = read_state(model)
    moved = max(float((out[None][k] - init[k]).abs().max()) for k in init)
    assert moved > 1e-3
    for k in init:
        torch.testing.assert_close(out[3][k], out[None][k], rtol=1e-4, atol=1e-6, msg=k)


def test_bad_micro_batch_is_refused():
    model, tok, examples = _classifier()
    with pytest.raises(ValueError, match="micro_batch_size must be positive"):
        train_module(model, examples, steps=1, lr=1e-3, batch_size=4, seed=0, pad_token_id=tok.pad_token_id,
                     progress=False, micro_batch_size=0)


def test_frozen_fp16_weights_train_with_a_loss_scale():
    """fp16 (GPUs without bf16): the frozen weights are half, the module fp32, the loss scaled."""
    model, tok = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu", dtype="fp16")
    model = attach(model, "lora", r=4, alpha=8, init_seed=0)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(p.dtype == torch.float32 for p in trained.values())
    assert any(p.dtype == torch.float16 for p in model.parameters())
    examples = prompt_answer_examples(tok, [f"question {i}" for i in range(8)], ["yes", "no"] * 4, 16)
    before = read_state(model)
    res = train_module(model, examples, steps=3, lr=1e-2, batch_size=4, seed=0, pad_token_id=tok.pad_token_id,
                       progress=False, micro_batch_size=2)
    after = read_state(model)
    assert all(x == x for x in res.losses)  # finite
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)
