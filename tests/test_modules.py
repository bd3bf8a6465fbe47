"""Modules on tiny models: the model's actual outputs change as the arithmetic says."""
import pytest
import torch

from pemnb import arithmetic as A
from pemnb.backbones import load_backbone
from pemnb.modules import (attach, kind_of, load_module, lora_scaling, read_state, save_module,
                           write_state)

BACKBONES = [("smoke-bert", "classification"), ("smoke-llama", "causal_lm"), ("smoke-gpt2", "causal_lm"),
             ("smoke-t5", "seq2seq")]


def tiny(name="smoke-bert", task="classification", kind="lora", seed=0):
    model, tok = load_backbone(name, task, seed=0, device="cpu")
    return attach(model, kind, r=4, alpha=8, init_seed=seed), tok


def perturbed(state, kind, seed=1):
    """A random non-trivial module state (as if trained); a PEM's head is left as it was."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        noise = 0.5 * torch.randn(v.shape, generator=g)
        if A.role(k) == "other" and kind != "fft":
            out[k] = v.clone()
        else:
            out[k] = (1 + noise) if A.role(k) == "ia3_l" else v + noise
    return out


def logits(model, tok, task):
    enc = tok(["a small test sentence", "another one, longer than the first"], return_tensors="pt",
              padding=True)
    with torch.no_grad():
        if task == "seq2seq":
            return model(**enc, decoder_input_ids=enc["input_ids"][:, :3]).logits
        return model(**enc).logits


@pytest.mark.parametrize("name,task", BACKBONES)
@pytest.mark.parametrize("kind", ["lora", "ia3", "fft"])
def test_adding_a_module_and_its_negation_gives_the_base_model(name, task, kind):
    model, tok = tiny(name, task, kind)
    base_state = read_state(model)
    ident = A.identity_like(base_state, kind)
    write_state(model, ident)
    base = logits(model, tok, task)
    theta = perturbed(base_state, kind)
    write_state(model, theta)
    changed = logits(model, tok, task)
    assert not torch.allclose(changed, base, atol=1e-4), "the module should change the outputs"
    write_state(model, A.merge(theta, A.negate(theta, kind), 0.5, kind))
    torch.testing.assert_close(logits(model, tok, task), base, atol=1e-5, rtol=1e-5)


def test_negated_lora_layer_output_moves_by_minus_delta_w():
    model, tok = tiny()
    theta = perturbed(read_state(model), "lora")
    write_state(model, theta)
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        base = layer.base_layer(x)
        plus = layer(x) - base
        write_state(model, A.negate(theta, "lora", 0.7))
        minus = layer(x) - base
    dw = A.delta_weights(theta, lora_scaling(model))["bert.encoder.layer.0.attention.self.query"]
    torch.testing.assert_close(plus, x @ dw.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(minus, -0.7 * x @ dw.T, atol=1e-5, rtol=1e-5)


def test_lora_ablation_leaves_outputs_unchanged_and_ia3_ablation_breaks_them():
    model, tok = tiny(kind="lora")
    theta = perturbed(read_state(model), "lora")
    write_state(model, theta)
    before = logits(model, tok, "classification")
    write_state(model, A.ablate(theta, "lora"))
    torch.testing.assert_close(logits(model, tok, "classification"), before, atol=1e-5, rtol=1e-5)

    model, tok = tiny(kind="ia3")
    theta = perturbed(read_state(model), "ia3")
    write_state(model, theta)
    enc = tok(["a small test sentence"], return_tensors="pt")
    hidden = lambda: model.base_model.model.bert(**enc).last_hidden_state.detach()
    before = hidden()
    write_state(model, A.ablate(theta, "ia3"))
    assert (hidden() - before).abs().max() > 0.1  # flipped activation scales change every layer


def test_ia3_negated_twice_gives_the_same_outputs():
    model, tok = tiny(kind="ia3")
    theta = perturbed(read_state(model), "ia3")
    write_state(model, theta)
    before = logits(model, tok, "classification")
    write_state(model, A.negate(A.negate(theta, "ia3"), "ia3"))
    torch.testing.assert_close(logits(model, tok, "classification"), before, atol=1e-5, rtol=1e-5)


def test_state_keys_are_canonical_and_include_the_head():
    model, _ = tiny(kind="lora")
    keys = list(read_state(model))
    assert "classifier.weight" in keys and "classifier.bias" in keys
    assert all(".default" not in k and not k.startswith("base_model") for k in keys)
    assert kind_of(model) == "lora"


def test_shared_initialisation():
    m1, _ = tiny(kind="lora", seed=7)
    m2, _ = tiny(kind="lora", seed=7)
    m3, _ = tiny(kind="lora", seed=8)
    s1, s2, s3 = read_state(m1), read_state(m2), read_state(m3)
    a = "bert.encoder.layer.0.attention.self.query.lora_A.weight"
    assert torch.equal(s1[a], s2[a]) and not torch.equal(s1[a], s3[a])
    assert torch.count_nonzero(s1["bert.encoder.layer.0.attention.self.query.lora_B.weight"]) == 0


def test_fft_state_is_the_task_vector():
    model, _ = tiny(kind="fft")
    assert all(torch.count_nonzero(v) == 0 for v in read_state(model).values())
    w = model.bert.encoder.layer[0].attention.self.query.weight
    with torch.no_grad():
        w.add_(1.0)
    tau = read_state(model)["bert.encoder.layer.0.attention.self.query.weight"]
    assert torch.allclose(tau, torch.ones_like(tau))


def test_write_state_rejects_a_state_of_another_model():
    model, _ = tiny(kind="lora")
    state = read_state(model)
    bad = dict(state)
    bad.pop("classifier.bias")
    with pytest.raises(ValueError, match="missing"):
        write_state(model, bad)
    k = "bert.encoder.layer.0.attention.self.query.lora_A.weight"
    bad = dict(state)
    bad[k] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="shape"):
        write_state(model, bad)
    with pytest.raises(ValueError, match="kind='lora'"):
        write_state(model, {"x.ia3_l": torch.ones(2)})


def test_model_without_module_gets_a_clear_error():
    model, _ = load_backbone("smoke-bert", "classification", device="cpu")
    with pytest.raises(ValueError, match="no module attached"):
        read_state(model)


def test_safetensors_roundtrip(tmp_path):
    model, _ = tiny(kind="ia3")
    theta = perturbed(read_state(model), "ia3")
    path = save_module(tmp_path / "m.safetensors", theta, "ia3", {"task": "sst2"})
    state, kind, meta = load_module(path)
    assert kind == "ia3" and meta == {"task": "sst2"}
    assert all(torch.equal(state[k], theta[k]) for k in theta)


def test_loading_a_foreign_safetensors_file_fails(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not written by pemnb"):
        load_module(tmp_path / "x.safetensors")
