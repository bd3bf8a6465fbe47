"""Modules in peft's own format: stock peft loads what pemnb exports with identical outputs, and any
peft LoRA / (IA)³ folder imports as a pemnb state."""
import json

import pytest
import torch
from peft import PeftModel

from pemnb import arithmetic as A
from pemnb import merge_methods as M
from pemnb.backbones import load_backbone
from pemnb.modules import (PEFT_PREFIX, attach, attach_peft, export_peft, import_peft, read_state,
                           save_finetuned, write_state)

# a classifier with a head (modules_to_save), decoders with and without one, GPT-2's Conv1D, T5
CASES = [("smoke-bert", "classification"), ("smoke-llama", "causal_lm"), ("smoke-llama", "classification"),
         ("smoke-gpt2", "causal_lm"), ("smoke-t5", "seq2seq")]


def base(name="smoke-bert", task="classification"):
    model, tok = load_backbone(name, task, seed=0, device="cpu")
    return model.eval(), tok


def attached(name="smoke-bert", task="classification", kind="lora", r=4, alpha=8):
    model, tok = base(name, task)
    return attach(model, kind, r=r, alpha=alpha, init_seed=0).eval(), tok


def trained_like(state, seed=1):
    """A random non-trivial state, head included (so the exported head must be the one loaded)."""
    g = torch.Generator().manual_seed(seed)
    return {k: (1 + 0.5 * torch.randn(v.shape, generator=g)) if A.role(k) == "ia3_l"
            else v + 0.5 * torch.randn(v.shape, generator=g) for k, v in state.items()}


def logits(model, tok, task):
    enc = tok(["a small test sentence", "another one, longer than the first"], return_tensors="pt", padding=True)
    with torch.no_grad():
        if task == "seq2seq":
            return model(**enc, decoder_input_ids=enc["input_ids"][:, :3]).logits
        return model(**enc).logits


def max_diff(a, b):
    return float((a - b).abs().max())


@pytest.mark.parametrize("name,task", CASES)
@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_stock_peft_loads_an_exported_module_with_identical_logits(tmp_path, name, task, kind):
    model, tok = attached(name, task, kind)
    theta = trained_like(read_state(model))
    write_state(model, theta)
    ours = logits(model, tok, task)
    folder = export_peft(model, tmp_path / "adapter")
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == {"lora": "LORA", "ia3": "IA3"}[kind]
    if task == "classification":
        assert config["modules_to_save"], "the head must be saved as modules_to_save"
    fresh, _ = base(name, task)
    assert max_diff(logits(fresh, tok, task), ours) > 1e-3, "the module should change the outputs"
    theirs = logits(PeftModel.from_pretrained(fresh, folder).eval(), tok, task)
    assert max_diff(theirs, ours) == 0.0


@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_a_composed_state_exports_and_loads_identically(tmp_path, kind):
    model, tok = attached(kind=kind)
    t1, t2 = trained_like(read_state(model), 1), trained_like(read_state(model), 2)
    composed = A.merge(t1, A.negate(t2, kind, 0.7), 0.4, kind)
    write_state(model, composed)
    ours = logits(model, tok, "classification")
    folder = export_peft(model, tmp_path / "composed", composed)
    theirs = logits(PeftModel.from_pretrained(base()[0], folder).eval(), tok, "classification")
    assert max_diff(theirs, ours) == 0.0


def test_a_composed_state_of_another_rank_keeps_the_scaling(tmp_path):
    model, tok = attached(r=4, alpha=8)  # s = α/r = 2
    t1, t2 = trained_like(read_state(model), 1), trained_like(read_state(model), 2)
    cat = M.cat([t1, t2], [0.5, 0.5])  # rank 8: exact ΔW sum at the same s
    folder = export_peft(model, tmp_path / "cat", cat)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (8, 16)
    wide, _ = attached(r=8, alpha=16)
    write_state(wide, cat)
    ours = logits(wide, tok, "classification")
    theirs = logits(PeftModel.from_pretrained(base()[0], folder).eval(), tok, "classification")
    assert max_diff(theirs, ours) == 0.0


@pytest.mark.parametrize("name,task", [("smoke-bert", "classification"), ("smoke-llama", "causal_lm")])
@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_a_folder_written_by_peft_imports_as_a_pemnb_state(tmp_path, name, task, kind):
    peft_model, tok = attached(name, task, kind)
    write_state(peft_model, trained_like(read_state(peft_model)))
    peft_model.save_pretrained(tmp_path / "by-peft")  # peft's own writer
    expected = logits(peft_model, tok, task)

    state, got_kind, config = import_peft(tmp_path / "by-peft")
    assert got_kind == kind and config["peft_type"] in ("LORA", "IA3")
    assert state.keys() == read_state(peft_model).keys()
    assert all(torch.equal(v, read_state(peft_model)[k]) for k, v in state.items())
    # into a pemnb module attached the usual way ...
    ours, _ = attached(name, task, kind)
    write_state(ours, state)
    assert max_diff(logits(ours, tok, task), expected) == 0.0
    # ... and with the folder's own config
    from_folder = attach_peft(base(name, task)[0], tmp_path / "by-peft").eval()
    assert max_diff(logits(from_folder, tok, task), expected) == 0.0
    assert A.infer_kind(read_state(from_folder)) == kind


@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_export_then_import_is_the_same_state(tmp_path, kind):
    model, _ = attached(kind=kind)
    theta = trained_like(read_state(model))
    state, got, _ = import_peft(export_peft(model, tmp_path / "a", theta))
    assert got == kind and state.keys() == theta.keys()
    assert all(torch.equal(state[k], theta[k]) for k in theta)


def test_an_old_style_bin_folder_imports(tmp_path):
    model, _ = attached()
    theta = trained_like(read_state(model))
    folder = export_peft(model, tmp_path / "bin", theta)
    torch.save({PEFT_PREFIX + k: v for k, v in theta.items()}, folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    state, _, _ = import_peft(folder)
    assert all(torch.equal(state[k], theta[k]) for k in theta)


def test_a_state_whose_keys_match_nothing_raises_naming_them(tmp_path):
    model, _ = attached()
    peft_keys = {PEFT_PREFIX + k: v for k, v in read_state(model).items()}
    with pytest.raises(ValueError, match=r"none of the state's 10 keys.*base_model\.model\.bert.*import_peft"):
        write_state(model, peft_keys)
    with pytest.raises(ValueError, match=r"none of the state's 2 keys.*'other\.lora_A\.weight'"):
        export_peft(model, tmp_path / "x", {"other.lora_A.weight": torch.zeros(4, 32),
                                            "other.lora_B.weight": torch.zeros(32, 4)})
    theta = read_state(model)
    with pytest.raises(TypeError, match="factorise"):
        export_peft(model, tmp_path / "y", M.task_arith([theta], [1.0], scaling=2.0))
    partial = dict(read_state(model))
    partial.pop("classifier.bias")
    with pytest.raises(ValueError, match=r"missing \['classifier\.bias'\]"):
        write_state(model, partial)


def test_import_refuses_what_is_not_a_lora_or_ia3_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        import_peft(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(ValueError, match="PREFIX_TUNING"):
        import_peft(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True}))
    with pytest.raises(ValueError, match="DoRA"):
        import_peft(tmp_path)


@pytest.mark.parametrize("name,task", [("smoke-bert", "classification"), ("smoke-llama", "causal_lm")])
def test_a_composed_full_fine_tune_saves_and_reloads_identically(tmp_path, name, task):
    model, tok = attached(name, task, "fft")
    tau = trained_like(read_state(model))
    composed = A.negate(tau, "fft", 0.6)  # θ_pre − λτ
    before = read_state(model)
    folder = save_finetuned(model, tmp_path / "fft", composed)
    assert all(torch.equal(before[k], v) for k, v in read_state(model).items()), "the model must not change"
    write_state(model, composed)
    ours = logits(model, tok, task)
    reloaded = type(model).from_pretrained(folder).eval()
    assert max_diff(logits(reloaded, tok, task), ours) == 0.0
    with pytest.raises(ValueError, match="task vector does not fit"):
        save_finetuned(model, tmp_path / "bad", {"nope.weight": torch.zeros(1)})


@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_peft_round_trip_reports_zero_and_leaves_the_model_as_it_was(kind):
    from pemnb.modules import peft_round_trip

    model, tok = attached(kind=kind)
    before = read_state(model)
    composed = A.negate(trained_like(before), kind)
    inputs = tok(["a small test sentence", "another one"], return_tensors="pt", padding=True)
    assert peft_round_trip(model, composed, base()[0], inputs) == 0.0
    assert all(torch.equal(before[k], v) for k, v in read_state(model).items())
    # the comparison can fail: a base that differs from the model's backbone shows up
    other, _ = load_backbone("smoke-bert", "classification", seed=5, device="cpu")
    assert peft_round_trip(model, composed, other.eval(), inputs) > 1e-3


def test_a_state_with_one_layer_of_another_rank_exports_with_rank_and_alpha_patterns(tmp_path):
    from peft import get_peft_model_state_dict

    model, tok = attached(r=4, alpha=8)
    theta = trained_like(read_state(model))
    layer = "bert.encoder.layer.0.attention.self.query"
    doubled = M.cat([theta, theta], [0.5, 0.5])  # same ΔW as θ, at rank 8
    mixed = {**theta, **{k: v for k, v in doubled.items() if k.startswith(layer + ".")}}
    folder = export_peft(model, tmp_path / "mixed", mixed)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    assert config["rank_pattern"] == {layer: 8} and config["alpha_pattern"] == {layer: 16}
    loaded = PeftModel.from_pretrained(base()[0], folder).eval()
    saved = get_peft_model_state_dict(loaded)
    assert all(torch.equal(saved[PEFT_PREFIX + k], v) for k, v in mixed.items())
    write_state(model, theta)
    torch.testing.assert_close(logits(loaded, tok, "classification"), logits(model, tok, "classification"),
                               atol=1e-5, rtol=1e-5)  # ½BA + ½BA vs BA: equal up to rounding
