"""Where hub backbones are read from ($PEMNB_HUB_DIR) and the dtype they load in (Profile.dtype)."""
import pytest
import torch

from pemnb.backbones import frozen_dtype, hub_source, load_backbone, resolve_dtype
from pemnb.profiles import load_profile


def test_hub_ids_resolve_to_a_local_mirror_when_one_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv("PEMNB_HUB_DIR", raising=False)
    assert hub_source("huggyllama/llama-7b") == "huggyllama/llama-7b"
    monkeypatch.setenv("PEMNB_HUB_DIR", str(tmp_path))
    (tmp_path / "huggyllama--llama-7b").mkdir()
    assert hub_source("huggyllama/llama-7b") == str(tmp_path / "huggyllama--llama-7b")
    with pytest.raises(FileNotFoundError, match="no folder t5-base"):  # never a silent download
        hub_source("t5-base")


def test_only_frozen_llama_loads_in_the_profiles_half_dtype():
    assert load_profile("paper").dtype == "bf16" and load_profile("small").dtype == "float32"
    assert frozen_dtype("llama-7b", "lora", "bf16") == "bf16"
    assert frozen_dtype("llama-7b", "fft", "bf16") == "float32"        # trained weights stay fp32
    assert frozen_dtype("gpt2-large", "lora", "bf16") == "float32"     # fits in fp32: keeps its precision
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16 and resolve_dtype("float32") == torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        resolve_dtype("int3")


def test_a_backbone_loads_in_the_dtype_asked_for():
    model, _ = load_backbone("smoke-llama", "causal_lm", device="cpu", dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_profile_overrides_from_the_environment(monkeypatch):
    """$PEMNB_PROFILE_OVERRIDES reaches notebooks, which call load_profile() bare."""
    monkeypatch.setenv("PEMNB_PROFILE_OVERRIDES", '{"steps": 3, "lam_grid": [0, 0.5, 1], '
                                                  '"chapters": {"05_instruction_detox": {"test_source": "offline"}}}')
    p = load_profile("paper")
    assert p.steps == 3 and p.lam_grid == (0, 0.5, 1) and p.chapter("05_instruction_detox")["test_source"] == "offline"
    assert load_profile("paper", steps=5).steps == 5  # a call's own override wins
    monkeypatch.setenv("PEMNB_PROFILE_OVERRIDES", '{"stepz": 3}')
    with pytest.raises(TypeError, match="stepz"):
        load_profile("paper")
    monkeypatch.setenv("PEMNB_PROFILE_OVERRIDES", "[1]")
    with pytest.raises(ValueError, match="JSON object"):
        load_profile("paper")
