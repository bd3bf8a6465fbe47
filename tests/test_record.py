"""pemnb.record: a chapter's run record — what ran, where, how long, the facts its prose glues —
written atomically to results/<profile>/<chapter>.json."""
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pemnb import record
from pemnb.profiles import load_profile


def test_pemnb_hash_follows_code_not_comments_or_docstrings(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text('"""Doc."""\ndef f(x):\n    return x + 1\n')
    (pkg / "b.py").write_text("Y = 2\n")
    h = record.pemnb_hash(pkg)
    assert len(h) == 16 and record.pemnb_hash(pkg) == h
    (pkg / "a.py").write_text('"""Another doc."""\n# a comment\ndef f(x):\n    """f."""\n\n    return x  +  1\n')
    assert record.pemnb_hash(pkg) == h
    (pkg / "a.py").write_text('def f(x):\n    return x + 2\n')
    assert record.pemnb_hash(pkg) != h
    (pkg / "a.py").write_text('"""Doc."""\ndef f(x):\n    return x + 1\n')
    (pkg / "c.py").write_text("Z = 3\n")  # a new module changes it too
    assert record.pemnb_hash(pkg) != h
    with pytest.raises(ValueError, match="no Python files"):
        record.pemnb_hash(tmp_path / "empty")
    assert len(record.pemnb_hash()) == 16  # the real package parses


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


def test_git_state_counts_changes_to_code_and_data_but_not_to_outputs(tmp_path):
    repo = tmp_path / "r"
    (repo / "pemnb").mkdir(parents=True)
    (repo / "notebooks").mkdir()
    (repo / "pemnb" / "m.py").write_text("A = 1\n")
    (repo / "notebooks" / "00.ipynb").write_text("{}")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    commit, dirty = record.git_state(repo)
    assert len(commit) == 40 and dirty is False
    assert record.in_history(commit, repo) is True
    assert record.in_history("0" * 40, repo) is False
    (repo / "notebooks" / "00.ipynb").write_text('{"executed": 1}')  # what a run writes
    (repo / "results").mkdir()
    (repo / "results" / "x.json").write_text("{}")
    assert record.git_state(repo) == (commit, False)
    (repo / "pemnb" / "m.py").write_text("A = 2\n")
    assert record.git_state(repo) == (commit, True)
    assert record.git_state(tmp_path / "not-a-repo") == (None, None)
    assert record.in_history(commit, tmp_path / "not-a-repo") is None


def test_run_writes_the_record_atomically(tmp_path):
    run = record.start("01_distribution_generalization", load_profile("smoke"))
    assert run.profile == "smoke" and run.pemnb_hash == record.pemnb_hash()
    assert run.header().loc["wall time", "value"] == "running"
    assert run.glue("lora_avg", np.float64(0.8125)) == 0.8125 and type(run.facts["lora_avg"]) is float
    run.fact("n_tasks", np.int64(8))
    run.fact("best_task", "sst2")
    path = run.finish({"beats_majority": True, "gain": -0.5}, directory=tmp_path)
    assert path == tmp_path / "smoke" / "01_distribution_generalization.json"
    data = json.loads(path.read_text())
    assert {"profile", "commit", "pemnb_hash", "wall_s", "machine", "facts"} <= set(data)
    assert data["facts"] == {"lora_avg": 0.8125, "n_tasks": 8, "best_task": "sst2", "beats_majority": True,
                             "gain": -0.5}
    assert data["profile"] == "smoke" and data["pemnb_hash"] == record.pemnb_hash()
    assert data["commit"] == record.git_state()[0]
    assert isinstance(data["wall_s"], float) and data["wall_s"] >= 0
    assert "core" in data["machine"]
    assert run.header().loc["wall time", "value"].endswith(" s")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert record.load("01_distribution_generalization", "smoke", tmp_path) == data


def test_profile_overrides_are_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("PEMNB_PROFILE_OVERRIDES", '{"steps": 2}')
    data = json.loads(record.start("00_x", "small").finish(directory=tmp_path).read_text())
    assert data["overrides"] == '{"steps": 2}'
    monkeypatch.delenv("PEMNB_PROFILE_OVERRIDES")
    assert record.start("00_x", "small").overrides is None


def test_results_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(record.RESULTS_ENV, str(tmp_path / "res"))
    path = record.start("00_x", "small").finish()
    assert path == tmp_path / "res" / "small" / "00_x.json"
    monkeypatch.delenv(record.RESULTS_ENV)
    assert record.results_dir() == record.REPO / "results"
    with pytest.raises(FileNotFoundError, match="make execute CH=00"):
        record.load("00_y", "small", tmp_path)


@pytest.mark.parametrize("value, error, match", [
    (math.nan, ValueError, "finite"), (math.inf, ValueError, "finite"), (np.float32("nan"), ValueError, "finite"),
    ({"a": 1}, TypeError, "flat"), ([1, 2], TypeError, "flat"), (None, TypeError, "flat"),
])
def test_facts_are_flat_finite_values(value, error, match):
    run = record.start("00_x", "smoke")
    with pytest.raises(error, match=match):
        run.fact("bad", value)
    with pytest.raises(error, match="'bad'"):
        run.finish({"bad": value})
    with pytest.raises(ValueError, match="non-empty string"):
        run.fact("", 1)


def test_bad_chapter_or_profile_is_refused():
    with pytest.raises(ValueError, match="plain name"):
        record.start("../escape", "small")
    with pytest.raises(TypeError, match="Profile or a profile name"):
        record.start("00_x", 3)


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = record.write_json(tmp_path / "r.json", {"a": 1})

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        record.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    with pytest.raises(ValueError):
        record.write_json(tmp_path / "n.json", {"a": math.nan})  # strict JSON


def test_provenance_rows_and_duration():
    run = record.start("00_x", "small")
    extra = run.provenance()
    assert set(extra) == {"commit", "pemnb source hash", "machine"}
    assert [record.duration(s) for s in (48.4, 1503, 7500)] == ["48 s", "25 min 3 s", "2 h 05 min"]


def test_glue_ci_keeps_three_facts():
    from pemnb import stats
    run = record.start("00_x", "smoke")
    ci = stats.paired_diff_ci(np.ones(20), np.zeros(20))
    assert run.glue_ci("merge_gain", ci) is ci
    assert run.facts == {"merge_gain": 1.0, "merge_gain_low": 1.0, "merge_gain_high": 1.0}


def test_zero_dimensional_arrays_and_tensors_are_facts():
    import torch
    run = record.start("00_x", "smoke")
    assert run.fact("a", np.array(0.25)) == 0.25 and run.fact("b", torch.tensor(3)) == 3
    with pytest.raises(TypeError, match="flat"):
        run.fact("c", np.array([0.25, 0.5]))
