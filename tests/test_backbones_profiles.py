"""Profiles and the small-profile backbones, loaded from their wheels with no network."""
import pytest
import torch

from pemnb.backbones import get_backbone, load_backbone, smollm2_dir
from pemnb.profiles import PROFILES, load_profile


def test_profile_from_env_and_overrides(monkeypatch):
    monkeypatch.setenv("PEMNB_PROFILE", "smoke")
    p = load_profile(steps=3)
    assert p.name == "smoke" and p.steps == 3 and PROFILES["smoke"].steps != 3
    monkeypatch.delenv("PEMNB_PROFILE")
    assert load_profile().name == "small"
    with pytest.raises(ValueError, match="unknown profile"):
        load_profile("huge")
    with pytest.raises(TypeError, match="unknown profile field"):
        load_profile("smoke", stpes=3)
    with pytest.raises(Exception):
        p.steps = 5  # frozen


def test_profiles_describe_their_scale():
    for p in PROFILES.values():
        text = p.describe()
        assert p.name in text and p.encoder in text and str(p.seed) in text
        assert p.lam_grid[0] == 0.0 and p.lam_grid[-1] == 1.0
    assert len(PROFILES["paper"].lam_grid) == 51  # 0 to 1 by 0.02


def test_a_chapter_with_its_own_settings_prints_only_what_it_takes_from_the_profile():
    small = PROFILES["small"]
    own = small.describe(own_settings=True)
    assert "profile      : small" in own and small.decoder in own and "seed" in own
    assert "steps        :" not in own and "train size" not in own and "λ grid" not in own
    assert "head lr      : 0.02" in own  # chapter 04's classifiers take the head's rate from the profile
    assert "head lr" not in PROFILES["paper"].describe(own_settings=True)  # paper: the module's rate


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        get_backbone("gpt5")


@pytest.mark.integration
def test_minilm_loads_from_its_wheel():
    model, tok = load_backbone("minilm-l6", "classification", num_labels=2, device="cpu")
    assert model.config.model_type == "bert" and model.config.num_hidden_layers == 6
    enc = tok(["a fine film"], return_tensors="pt")
    with torch.no_grad():
        assert model(**enc).logits.shape == (1, 2)


@pytest.mark.integration
def test_smollm2_loads_from_its_wheel_and_is_cached_as_safetensors():
    d = smollm2_dir()
    assert (d / "model.safetensors").exists()
    model, tok = load_backbone("smollm2-135m", "causal_lm", device="cpu")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0][enc["input_ids"].shape[1]:])  # a real pretrained model
    assert smollm2_dir() == d  # second call reuses the converted copy


def test_pemnb_device_overrides_the_profile_device_unless_the_call_names_one(monkeypatch):
    from pemnb.profiles import load_profile

    monkeypatch.delenv("PEMNB_DEVICE", raising=False)
    assert load_profile("smoke").device == "cpu" and load_profile("small").device == "auto"
    monkeypatch.setenv("PEMNB_DEVICE", "cuda")
    assert load_profile("smoke").device == "cuda" and load_profile("small").device == "cuda"
    assert load_profile("smoke", device="cpu").device == "cpu"


@pytest.mark.integration
def test_loading_is_quiet_and_restores_transformers_logging(capfd):
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    load_backbone("minilm-l6", "classification", num_labels=3)  # a fresh head: transformers would report it MISSING
    out, err = capfd.readouterr()
    assert "MISSING" not in out + err and "Loading weights" not in out + err
    assert hf_logging.get_verbosity() == before and hf_logging.is_progress_bar_enabled()
