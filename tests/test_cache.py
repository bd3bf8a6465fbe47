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


FAKE = """
\"\"\"A chapter module.\"\"\"
from pemnb.syntax import presentation


def compute(x):
    \"\"\"The result.\"\"\"
    return x + 1  # one


class Bench:
    def train(self, x):
        return compute(x) * 2

    def evaluate(self, x):
        return x


@presentation
def figure(rows):
    return sorted(rows)
"""


def _write_module(tmp_path, monkeypatch, name, text):
    import sys

    (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return code_version([name]), code_version([f"{name}:Bench.train"])


def test_cache_keys_follow_the_code_that_computes_not_the_code_that_draws(tmp_path, monkeypatch):
    import time

    base = _write_module(tmp_path, monkeypatch, "fake_chapter", FAKE)
    edits = {
        "a figure's code": FAKE.replace("return sorted(rows)", "return sorted(rows, reverse=True)"),
        "a comment and a docstring": FAKE.replace("# one", "# the next").replace("The result.", "Result."),
    }
    for what, text in edits.items():
        time.sleep(0.01)  # a new mtime, as an editor's save gives
        assert _write_module(tmp_path, monkeypatch, "fake_chapter", text) == base, what
    time.sleep(0.01)
    module, train = _write_module(tmp_path, monkeypatch, "fake_chapter", FAKE.replace("return x + 1", "return x + 2"))
    assert module != base[0]  # the computation changed: results of this module are stale
    assert train == base[1]   # ...but Bench.train's own code did not
    time.sleep(0.01)
    module, train = _write_module(tmp_path, monkeypatch, "fake_chapter", FAKE.replace("* 2", "* 3"))
    assert train != base[1]   # editing the training method invalidates what it trained
    with pytest.raises(ValueError, match="no 'Bench.fit'"):
        code_version(["fake_chapter:Bench.fit"])


def test_trained_modules_key_on_the_method_that_trains_them():
    from pemnb import cache as cache_mod
    from pemnb.classify import TRAIN_METHOD as CLS_TRAIN
    from pemnb.generative import TRAIN_METHOD as DEC_TRAIN

    for method in (CLS_TRAIN, DEC_TRAIN):
        assert "train_module" in cache_mod._code_of(method)  # it is the code that runs the loop
    # chapter figure functions are left out of every result key; the computations are in
    for module, drawn, computed in [("pemnb.distribution", "sweep_figure", "run_chapter"),
                                    ("pemnb.unlearning", "sweep_figure", "measure")]:
        code = cache_mod._code_of(module)
        assert f"name='{computed}'" in code and f"name='{drawn}'" not in code


def test_fingerprint_of_rows_is_the_one_cached_modules_were_keyed_by():
    import hashlib
    import json

    from pemnb.cache import fingerprint

    rows = [{"sentence": "a b", "label": 1, "idx": 0}, {"label": 0, "sentence": "c", "idx": 1}]
    h = hashlib.sha256()
    for row in rows:  # the definition classify.fingerprint keyed every cached classifier module by
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
    assert fingerprint(rows) == h.hexdigest()[:20]
    assert fingerprint(rows) != fingerprint(rows[::-1])            # order is part of the data
    assert fingerprint(rows) != fingerprint([{**rows[0], "label": 0}, rows[1]])
    # a single value: fingerprint([value]) is the sha of its JSON (instruct's keys of prompt lists)
    value = ["x", "y"]
    assert fingerprint([value]) == hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:20]
    # a tensor goes in by its values, which str() would elide past 1000 of them
    a, b = torch.zeros(2000), torch.zeros(2000)
    b[1000] = 1.0
    assert fingerprint([{"x": a}]) != fingerprint([{"x": b}])
    with pytest.raises(TypeError, match="sequence of rows"):
        fingerprint("abc")
    with pytest.raises(TypeError, match="sequence of rows"):
        fingerprint({"a": 1})


def test_fingerprint_of_a_dataset_is_that_of_its_rows():
    from datasets import Dataset

    from pemnb.cache import fingerprint

    rows = [{"premise": "p", "hypothesis": "h", "label": 2}, {"premise": "q", "hypothesis": "i", "label": 0}]
    assert fingerprint(Dataset.from_list(rows)) == fingerprint(rows)
