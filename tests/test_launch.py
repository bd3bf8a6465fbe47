"""`python -m pemnb.launch`: one entry point trains any chapter's modules into the cache, also as an
`accelerate launch` of several processes, and the chapter then finds them there."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pemnb import launch
from pemnb.profiles import load_profile


def test_every_chapter_has_an_entry_and_an_unknown_one_is_refused():
    assert sorted(launch.CHAPTERS) == ["00", "01", "02", "03", "04", "05", "06"]
    with pytest.raises(ValueError, match="unknown chapter '07'"):
        launch.train_chapter("07", load_profile("smoke"))


def test_chapter_01_can_train_some_of_its_tasks_and_a_wrong_selection_is_refused(shared_data):
    profile = load_profile("smoke")
    names = launch.train_chapter("01", profile, ["lora"], progress=False, tasks=["stsb", "rte"])
    assert names == [f"lora {t}-{sub}" for t in ("stsb", "rte") for sub in ("s0", "s1", "fullset")]
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['glue'\]"):
        launch.train_chapter("01", profile, ["lora"], progress=False, tasks=["glue"])
    with pytest.raises(ValueError, match="chapter 01's tasks"):
        launch.train_chapter("02", profile, ["lora"], progress=False, tasks=["rte"])


@pytest.mark.multiprocess
def test_two_cpu_processes_train_chapter_00_and_the_chapter_finds_its_modules(shared_data, tmp_path, monkeypatch):
    """`accelerate launch --cpu --num_processes 2` at smoke, then chapter 00's own training calls (with
    training switched off) must all be cache hits."""
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "PEMNB_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    run = subprocess.run([str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pemnb.launch",
                          "--chapter", "00", "--profile", "smoke"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("[pemnb.launch] chapter 00 at smoke: 6 modules") == 1  # rank 0 reports

    import pemnb.classify as C

    monkeypatch.setenv("PEMNB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(C, "train_module", lambda *a, **k: pytest.fail("chapter 00 retrained a launched module"))
    profile = load_profile("smoke")
    train, _, half_a, half_b = launch.chapter00_data(profile)  # what the notebook trains on
    for kind in ("lora", "ia3"):
        bench = C.ClassifierBench(profile, "glue/sst2", kind, progress=False)
        bench.train(train, tag="sst2")
        bench.train(half_a, tag="sst2-half-a", steps=profile.steps // 2)
        bench.train(half_b, tag="sst2-half-b", steps=profile.steps // 2)


def test_under_accelerate_launch_each_process_gets_its_own_gpu(monkeypatch):
    import torch

    from pemnb.backbones import resolve_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("cuda") == torch.device("cuda") and resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda", 1) == resolve_device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is kept
    assert resolve_device("cpu") == torch.device("cpu")
