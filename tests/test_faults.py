"""Faults survived: checkpoints for runs of any length, damaged checkpoints discarded with a warning,
a killed training process resumed from its checkpoint, orphaned temporary folders cleaned, racing
cache writers never failing."""
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest
import torch

import pemnb.cache as cache_mod
from pemnb.cache import Cache, clean_orphans, is_orphan
from pemnb.modules import read_state
from pemnb.train import default_checkpoint_every, train_module
from test_train import fresh, toy_examples  # tests/ is on the path, as for every test file

ROOT = Path(__file__).resolve().parent.parent


def run(tmp_path=None, kind="lora", **kw):
    model, tok = fresh(kind)
    args = dict(steps=8, lr=5e-3, batch_size=8, seed=3, progress=False, pad_token_id=tok.pad_token_id)
    args.update(kw)
    res = train_module(model, toy_examples(tok), checkpoint_dir=tmp_path, **args)
    return res, read_state(model)


def progress_step(folder):
    return json.loads((folder / "checkpoint" / "progress.json").read_text())["step"]


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------ checkpoint cadence
def test_default_cadence_checkpoints_short_runs_too():
    assert [default_checkpoint_every(n) for n in (1, 8, 30, 999, 5000)] == [1, 1, 3, 100, 100]


def test_a_short_run_without_checkpoint_every_checkpoints_before_its_end(tmp_path):
    # what ClassifierBench.train does: no checkpoint_every, a 30-step run (every 3 steps by default)
    res, _ = run(tmp_path, steps=30, stop_after=7)
    assert res.steps == 7 and progress_step(tmp_path) == 6


def test_a_checkpoint_is_written_every_minute_even_between_step_checkpoints(tmp_path):
    run(tmp_path, steps=30, checkpoint_every=1000, checkpoint_seconds=0.0, stop_after=5)
    assert progress_step(tmp_path) == 5  # the time rule fired at every step


# ------------------------------------------------------------------------------ damaged checkpoints
@pytest.mark.parametrize("name", ["module.safetensors", "optim.pt", "progress.json"])
def test_a_truncated_checkpoint_is_named_discarded_and_training_starts_over(tmp_path, name):
    _, straight = run()
    run(tmp_path, checkpoint_every=2, stop_after=4)
    f = tmp_path / "checkpoint" / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match=rf"damaged checkpoint discarded \(.*checkpoint/{name}"):
        res, state = run(tmp_path, checkpoint_every=2)
    assert res.resumed_from == 0 and len(res.losses) == 8
    assert_same_state(state, straight)


def test_a_damaged_checkpoint_falls_back_to_the_last_good_one(tmp_path):
    _, straight = run()
    run(tmp_path, checkpoint_every=2, stop_after=4)
    # killed between the two renames of a save: the good checkpoint is checkpoint.prev ...
    shutil.copytree(tmp_path / "checkpoint", tmp_path / "checkpoint.prev")
    (tmp_path / "checkpoint" / "progress.json").write_text('{"step": 6, "loss')  # ... and the new one is bad
    with pytest.warns(RuntimeWarning, match="progress.json"):
        res, state = run(tmp_path, checkpoint_every=2)
    assert res.resumed_from == 4
    assert_same_state(state, straight)
    assert not (tmp_path / "checkpoint.prev").exists()


def test_a_killed_writers_checkpoint_tmp_is_cleaned(tmp_path):
    (tmp_path / "checkpoint.tmp").mkdir()
    (tmp_path / "checkpoint.tmp" / "module.safetensors").write_bytes(b"\x00" * 10)
    res, _ = run(tmp_path, checkpoint_every=2, stop_after=1)
    assert res.resumed_from == 0 and not (tmp_path / "checkpoint.tmp").exists()


KILLED_RUN = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from test_faults import fresh, toy_examples
    from pemnb.train import train_module

    class Slow(list):  # slows every step without changing what is trained
        def __getitem__(self, i):
            time.sleep(0.01)
            return list.__getitem__(self, i)

    model, tok = fresh("ia3")
    train_module(model, Slow(toy_examples(tok)), steps={steps}, lr=5e-3, batch_size=8, seed=3,
                 pad_token_id=tok.pad_token_id, checkpoint_dir={folder!r}, checkpoint_every=2, progress=False)
    print("finished")
""")


def test_a_training_process_killed_after_its_first_checkpoint_resumes_from_it(tmp_path):
    steps = 200  # ≈ 16 s at 10 ms per example: far longer than the wait for the first checkpoint
    script = KILLED_RUN.format(root=str(ROOT), tests=str(ROOT / "tests"), steps=steps, folder=str(tmp_path))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "checkpoint" / "progress.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up or write anything more
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    saved = progress_step(tmp_path)
    assert 2 <= saved < steps
    res, _ = run(tmp_path, kind="ia3", steps=steps, checkpoint_every=2, stop_after=2)
    assert res.resumed_from == saved > 0 and res.steps == saved + 2
    assert not (tmp_path / "checkpoint.tmp").exists()


# ------------------------------------------------------------------------------ cache: orphans, races
def test_orphaned_temporary_folders_are_cleaned_and_live_ones_kept(tmp_path):
    c = Cache(tmp_path)
    shard = c.dir / "ab"
    shard.mkdir()
    host = socket.gethostname().replace("-", "_")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {"dead": f".tmp-{host}-{dead.pid}-x1", "mine": f".tmp-{host}-{os.getpid()}-x2",
                 "live": f".tmp-{host}-{live.pid}-x3", "elsewhere": ".tmp-otherhost-1-x4",
                 "old_style_young": ".tmp-abc123", "old_style_old": ".tmp-def456"}
        for n in names.values():
            (shard / n).mkdir()
            (shard / n / "result.json").write_text("{}")
        week_ago = time.time() - 7 * 24 * 3600
        os.utime(shard / names["old_style_old"], (week_ago, week_ago))
        assert is_orphan(shard / names["dead"]) and not is_orphan(shard / names["live"])
        Cache(tmp_path)  # opening a cache cleans up
        left = {p.name for p in shard.iterdir()}
        assert left == {names[k] for k in ("mine", "live", "elsewhere", "old_style_young")}
        assert clean_orphans(c.dir) == []
    finally:
        live.kill()
        live.wait()


def test_a_writer_that_loses_the_rename_keeps_the_winners_valid_entry(tmp_path, monkeypatch):
    c = Cache(tmp_path)
    parts = {"race": 1}
    entry = c.path(c.key(parts))
    real_replace = os.replace

    def racing_replace(src, dst):
        if Path(dst) == entry and not entry.exists():
            shutil.copytree(src, dst)  # the other writer's entry lands first (same key, same value)
        return real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", racing_replace)
    c.put_json(parts, {"acc": 0.5})  # os.replace raises "Directory not empty" inside: must not escape
    monkeypatch.setattr(cache_mod.os, "replace", real_replace)
    assert c.get_json(parts) == {"acc": 0.5}
    assert not list(entry.parent.glob(".tmp-*"))


def test_a_writer_that_loses_to_a_damaged_entry_replaces_it(tmp_path, monkeypatch):
    c = Cache(tmp_path)
    parts = {"race": 2}
    entry = c.path(c.key(parts))
    real_replace = os.replace
    calls = []

    def racing_replace(src, dst):
        if Path(dst) == entry and not calls:
            calls.append(1)
            shutil.copytree(src, dst)
            (Path(dst) / "result.json").write_text('{"acc": 0.')  # the winner's copy is damaged
        return real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", racing_replace)
    c.put_json(parts, {"acc": 0.5})
    monkeypatch.setattr(cache_mod.os, "replace", real_replace)
    assert c.get_json(parts) == {"acc": 0.5}


def _hammer(root: str, n: int) -> int:
    c = Cache(root)
    for i in range(n):
        c.put_json({"shared": 1}, {"value": 42})
        got = c.get_json({"shared": 1})
        assert got in (None, {"value": 42}), got
    return n


def test_concurrent_writers_of_one_entry_never_raise(tmp_path):
    with ProcessPoolExecutor(4, mp_context=get_context("fork")) as pool:
        done = list(pool.map(_hammer, [str(tmp_path)] * 4, [25] * 4))
    assert done == [25] * 4
    c = Cache(tmp_path)
    assert c.get_json({"shared": 1}) == {"value": 42}
    assert not list(c.dir.rglob(".tmp-*"))
