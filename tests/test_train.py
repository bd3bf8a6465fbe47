"""Training: seeded, dynamically padded, and a resumed run equals an uninterrupted one."""
import pytest
import torch

from pemnb.backbones import load_backbone
from pemnb.modules import attach, read_state
from pemnb.train import batch_order, pad_collate, steps_for_epochs, train_module


def toy_examples(tok, n=24):
    texts = [("good " * (1 + i % 5)).strip() if i % 2 else ("bad " * (1 + i % 7)).strip() for i in range(n)]
    enc = tok(texts, truncation=True, max_length=16)
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": i % 2}
            for i in range(n)]


def fresh(kind="lora"):
    model, tok = load_backbone("smoke-bert", "classification", seed=0, device="cpu")
    return attach(model, kind, r=4, alpha=8, init_seed=0), tok


def test_pad_collate_pads_to_the_longest_row():
    batch = pad_collate(0)([{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": 1},
                            {"input_ids": [5], "attention_mask": [1], "labels": 0}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
    lm = pad_collate(0)([{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [1], "labels": [1]}])
    assert lm["labels"].tolist() == [[1, 2], [1, -100]]


def test_steps_for_epochs_rounds_up_to_whole_steps():
    assert steps_for_epochs(100, 1, 32) == 4 and steps_for_epochs(96, 10, 96) == 10
    assert steps_for_epochs(100, 1, 8) == 13 and steps_for_epochs(100, 3, 8) == 38
    assert steps_for_epochs(1, 0.1, 8) == 1 and steps_for_epochs(3, 1, 128) == 1  # at least one step
    for bad in [(0, 1, 8), (8, 0, 8), (8, 1, 0), (-1, 1, 8)]:
        with pytest.raises(ValueError, match="positive"):
            steps_for_epochs(*bad)


def test_batch_order_is_seeded_and_covers_every_example_each_epoch():
    a, b, c = batch_order(10, 5, 4, seed=1), batch_order(10, 5, 4, seed=1), batch_order(10, 5, 4, seed=2)
    assert a == b and a != c
    flat = [i for batch in a for i in batch]
    assert sorted(flat[:10]) == list(range(10))


def test_training_lowers_the_loss_and_moves_only_the_module():
    model, tok = fresh()
    frozen = model.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer.weight.clone()
    before = read_state(model)
    res = train_module(model, toy_examples(tok), steps=30, lr=5e-3, batch_size=8, seed=0,
                       pad_token_id=tok.pad_token_id, progress=False)
    after = read_state(model)
    assert sum(res.losses[-5:]) / 5 < sum(res.losses[:5]) / 5
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(frozen, model.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer.weight)


def test_interrupted_training_resumes_to_the_same_module(tmp_path):
    kw = dict(steps=8, lr=5e-3, batch_size=8, seed=3, checkpoint_every=2, progress=False)
    model, tok = fresh("ia3")
    train_module(model, toy_examples(tok), pad_token_id=tok.pad_token_id, **kw)
    straight = read_state(model)

    model, tok = fresh("ia3")
    part = train_module(model, toy_examples(tok), pad_token_id=tok.pad_token_id,
                        checkpoint_dir=tmp_path, stop_after=4, **kw)
    assert part.steps == 4 and (tmp_path / "checkpoint").exists()
    model, tok = fresh("ia3")  # a new process would start from scratch like this
    resumed = train_module(model, toy_examples(tok), pad_token_id=tok.pad_token_id,
                           checkpoint_dir=tmp_path, **kw)
    assert resumed.resumed_from == 4 and len(resumed.losses) == 8
    for k, v in read_state(model).items():
        torch.testing.assert_close(v, straight[k], atol=1e-6, rtol=1e-5)


def test_training_without_a_module_fails_clearly():
    import pytest

    model, tok = load_backbone("smoke-bert", "classification", device="cpu")
    with pytest.raises(ValueError, match="no module attached"):
        train_module(model, toy_examples(tok), steps=1, lr=1e-3, batch_size=2, seed=0,
                     pad_token_id=tok.pad_token_id, progress=False)


def test_the_head_beside_a_module_trains_at_its_own_rate():
    from pemnb.train import head_parameter_groups

    model, tok = fresh("lora")
    groups = head_parameter_groups(model, 1e-3, 2e-2)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [g["lr"] for g in groups] == [1e-3, 2e-2]
    assert all(".modules_to_save." in names[id(p)] for p in groups[1]["params"])
    assert not any(".modules_to_save." in names[id(p)] for p in groups[0]["params"])
    assert len(head_parameter_groups(model, 1e-3, None)) == 1  # no head rate: one group, as peft trains it
    with pytest.raises(ValueError, match="positive"):
        head_parameter_groups(model, 1e-3, 0.0)

    # Adam's first step moves every parameter with a gradient by its group's rate (no warm-up at 1 step).
    before = dict((n, p.detach().clone()) for n, p in model.named_parameters() if p.requires_grad)
    train_module(model, toy_examples(tok), steps=1, lr=1e-3, batch_size=8, seed=0, head_lr=2e-2,
                 pad_token_id=tok.pad_token_id, progress=False)
    moved = {n: (p.detach() - before[n]).abs() for n, p in model.named_parameters() if n in before}
    head = torch.cat([d.flatten() for n, d in moved.items() if ".modules_to_save." in n and n.endswith("weight")])
    lora_b = torch.cat([d.flatten() for n, d in moved.items() if "lora_B" in n])
    torch.testing.assert_close(head.median(), torch.tensor(2e-2), rtol=1e-2, atol=0)
    torch.testing.assert_close(lora_b.median(), torch.tensor(1e-3), rtol=1e-2, atol=0)
