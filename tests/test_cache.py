"""The module/result cache: keyed by content, atomic, corrupt or stale entries never used."""
import warnings

import pytest
import torch

from pemnb.cache import Cache, code_version


def state():
    return {"x.lora_A.weight": torch.randn(2, 3), "x.lora_B.weight": torch.randn(3, 2)}


def test_module_roundtrip_and_key_sensitivity(tmp_path):
    c = Cache(tmp_path)
    s = state()
    parts = {"task": "sst2", "seed": 0, "lr": 1e-3}
    assert c.get_module(parts) is None
    c.put_module(parts, s, "lora", {"note": "x"})
    got, kind, meta = c.get_module(parts)
    assert kind == "lora" and meta == {"note": "x"} and torch.equal(got["x.lora_A.weight"], s["x.lora_A.weight"])
    assert c.get_module({**parts, "seed": 1}) is None
    assert c.get_module({**parts, "lr": 2e-3}) is None
    assert c.key(parts) == c.key(dict(reversed(list(parts.items()))))  # order does not matter


def test_corrupt_entry_is_detected_deleted_and_recomputed(tmp_path):
    c = Cache(tmp_path)
    parts = {"n": 1}
    path = c.put_module(parts, state(), "lora")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="corrupt or stale"):
        assert c.get_module(parts) is None
    assert not path.parent.exists()
    calls = []
    assert c.result({"r": 1}, lambda: calls.append(1) or {"acc": 0.5}) == {"acc": 0.5}
    (c.path(c.key({"r": 1})) / "result.json").write_text('{"acc": 0.9}')  # tampered
    with pytest.warns(RuntimeWarning):
        assert c.result({"r": 1}, lambda: calls.append(1) or {"acc": 0.5}) == {"acc": 0.5}
    assert len(calls) == 2


def test_result_is_computed_once(tmp_path):
    c = Cache(tmp_path)
    calls = []
    f = lambda: calls.append(1) or [1.5, 2]
    assert c.result({"a": 1}, f) == [1.5, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert c.result({"a": 1}, f) == [1.5, 2]
    assert len(calls) == 1
    assert not list(tmp_path.rglob(".tmp-*")), "temporary folders must not be left behind"


def test_code_change_invalidates(tmp_path, monkeypatch):
    c = Cache(tmp_path)
    parts = {"a": 1}
    c.put_json(parts, 1)
    import pemnb.cache as cache_mod

    monkeypatch.setattr(cache_mod, "code_version", lambda modules=(): "something-else")
    assert c.get_json(parts) is None
    assert code_version() != "something-else"


def test_unhashable_parts_are_rejected(tmp_path):
    with pytest.raises(TypeError, match="cache key"):
        Cache(tmp_path).key({"model": object()})
