"""Train a chapter's modules into the cache ahead of the book, on one GPU or on several.

    python -m pemnb.launch --chapter 03 --profile paper                              # one process
    accelerate launch --num_processes 4 -m pemnb.launch --chapter 01 --profile paper  # data-parallel

Each chapter's training goes through that chapter's own functions and settings, so its modules land
under the cache keys the notebook looks up: building the book afterwards finds every module trained
and only evaluates (a paper chapter's cells then no longer train for hours). Under ``accelerate
launch`` each optimisation step's batch is shared out among the processes (``train.train_module``:
the same gradient as one process), and rank 0 writes the cache.
"""
from __future__ import annotations

import argparse
import gc
import time
from typing import Callable, Sequence

from .profiles import Profile, load_profile


def _free() -> None:
    """Drop a bench's backbone before the next is loaded (a paper backbone is gigabytes)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def chapter00_data(profile: Profile):
    """(train, evalset, half_a, half_b) of chapter 00: SST-2 rows as the notebook samples them."""
    from . import data

    train = data.subsample(data.load("glue/sst2", "train"), profile.train_size, seed=profile.seed)
    evalset = data.subsample(data.load("glue/sst2", "validation"), profile.eval_size, seed=profile.seed + 1)
    half_a, half_b = data.split_off(train, len(train) // 2, seed=profile.seed)
    return train, evalset, half_a, half_b


def train_00(profile: Profile, kinds: Sequence[str] | None = None, progress: bool = True) -> list[str]:
    """Chapter 00: an SST-2 module per kind, and the two half-data modules it adds."""
    from .classify import ClassifierBench

    train, _, half_a, half_b = chapter00_data(profile)
    done = []
    for kind in kinds or ("lora", "ia3"):
        bench = ClassifierBench(profile, "glue/sst2", kind, progress=progress)
        bench.train(train, tag="sst2")
        bench.train(half_a, tag="sst2-half-a", steps=profile.steps // 2)
        bench.train(half_b, tag="sst2-half-b", steps=profile.steps // 2)
        done += [f"{kind} sst2", f"{kind} sst2-half-a", f"{kind} sst2-half-b"]
        del bench
        _free()
    return done


def train_01(profile: Profile, kinds: Sequence[str] | None = None, progress: bool = True,
             tasks: Sequence[str] | None = None) -> list[str]:
    """Chapter 01: s0, s1 and fullset modules of every task and kind."""
    from . import distribution

    settings = distribution.settings(profile)
    done = []
    for task in tasks or settings.tasks:
        try:
            td = distribution.task_data(task, profile, settings)
        except distribution.TaskSkipped as e:
            print(f"[pemnb.launch] skipped: {e}")
            continue
        for kind in kinds or settings.kinds:
            bench, _ = distribution.train_modules(profile, td, kind, settings, progress=progress)
            done += [f"{kind} {task}-{sub}" for sub in ("s0", "s1", "fullset")]
            del bench
            _free()
    return done


def train_02(profile: Profile, kinds: Sequence[str] | None = None, progress: bool = True) -> list[str]:
    """Chapter 02: an MNLI and an RTE module per kind."""
    from . import multitask
    from .cache import Cache

    s = multitask.settings(profile)
    tasks = {t: multitask.load_task(t, s, seed=profile.seed) for t in multitask.TASKS}
    done = []
    for kind in kinds or s.kinds:
        bench = multitask.make_bench(profile, kind, s, cache=Cache(), progress=progress)
        # the chapter's modules, with their curves
        multitask.task_modules(bench, tasks, multitask.prompt_format(bench, s), s)
        done += [f"{kind} multitask-{t}" for t in tasks]
        del bench
        _free()
    return done


def train_03(profile: Profile, kinds: Sequence[str] | None = None, progress: bool = True) -> list[str]:
    """Chapter 03: the toxic module of every kind (no scorer or WikiText needed to train)."""
    from . import unlearning

    cfg = unlearning.settings(profile)
    texts, _, _ = unlearning.toxic_comments(cfg, profile.seed)
    done = []
    for kind in kinds or cfg.kinds:
        # one backbone at a time
        lab = unlearning.UnlearningLab(profile, scorer=None, text="", cfg=cfg, progress=progress)
        lab.train(kind, texts)
        done.append(f"{kind} civil-comments-toxic")
        del lab
        _free()
    return done


def train_04(profile: Profile, kinds: Sequence[str] | None = None, progress: bool = True) -> list[str]:
    """Chapter 04: cls and LM modules on both domains, per backbone and kind."""
    from . import domain_transfer

    S = domain_transfer.settings(profile)
    domains = domain_transfer.load_domains(profile, S)
    done = []
    for backbone in S.backbones:
        for kind in kinds or S.kinds:
            bench = domain_transfer.make_bench(profile, backbone, kind, S, progress=progress)
            modules, _ = domain_transfer.train_modules(bench, domains, S)
            done += [f"{backbone} {kind} {name}" for name in modules]
            del bench, modules
            _free()
    return done


def train_05(profile: Profile, kinds: Sequence[str] | None = None, progress: bool = True) -> list[str]:
    """Chapter 05: the instruction LoRA (unless the profile uses a published one), the toxic
    instruction set (written by the configured writer, or the paper's gated file) and θ_tox."""
    from . import instruct

    if kinds and "lora" not in kinds:
        return []
    cfg = instruct.settings(profile)
    bench = instruct.InstructBench(profile, cfg, progress=progress)
    comments, _ = instruct.comment_pools(cfg, profile.seed)
    alpaca_rows, _ = instruct.alpaca_pools(cfg, profile.seed)
    records, _ = bench.training_pairs(instruct.pick_backend(bench, "writer"), comments)
    theta_alp = bench.alpaca_module(alpaca_rows)
    bench.toxic_module(records, theta_alp)
    return [("θ_alp " + (cfg.alpaca_adapter or "trained")), f"θ_tox ({len(records)} pairs)"]


def train_06(profile: Profile, kinds: Sequence[str] | None = None, progress: bool = True) -> list[str]:
    """Chapter 06 trains nothing of its own: the LoRA modules of chapters 01 and 02 it composes."""
    from . import distribution
    from . import merge_chapter

    s = merge_chapter.settings(profile)
    tasks = [t for t in s.distribution_tasks if t in distribution.settings(profile).tasks]
    done = train_01(profile, ("lora",), progress, tasks=tasks)
    if s.multitask:
        done += train_02(profile, ("lora",), progress)
    return done


CHAPTERS: dict[str, Callable[..., list[str]]] = {"00": train_00, "01": train_01, "02": train_02,
                                                  "03": train_03, "04": train_04, "05": train_05, "06": train_06}


def train_chapter(chapter: str, profile: Profile, kinds: Sequence[str] | None = None,
                  progress: bool = True, tasks: Sequence[str] | None = None) -> list[str]:
    """Train (or find in the cache) every module chapter `chapter` ("00" … "06") uses; their names.

    `tasks` (chapter 01 only) trains those tasks' modules, in that order: a second process can train
    the last tasks while the notebook trains the first ones (see the README's "What a build costs")."""
    if chapter not in CHAPTERS:
        raise ValueError(f"unknown chapter {chapter!r}; choose one of {sorted(CHAPTERS)}")
    if tasks is None:
        return CHAPTERS[chapter](profile, kinds, progress)
    if chapter != "01":
        raise ValueError(f"--tasks selects chapter 01's tasks; chapter {chapter} has no task list to select from")
    from . import distribution

    known = distribution.settings(profile).tasks
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; chapter 01 at {profile.name} has {list(known)}")
    return train_01(profile, kinds, progress, tasks=tasks)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pemnb.launch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chapter", required=True, nargs="+", help="00 … 06, or 'all'")
    ap.add_argument("--profile", default=None, help="smoke | small | paper (default: $PEMNB_PROFILE or small)")
    ap.add_argument("--kinds", nargs="+", default=None, choices=["fft", "lora", "ia3"],
                    help="train only these module kinds (default: the chapter's)")
    ap.add_argument("--tasks", nargs="+", default=None,
                    help="chapter 01 only: train these tasks' modules, in this order (default: all)")
    args = ap.parse_args(argv)
    from .classify import is_main_process

    chapters = sorted(CHAPTERS) if args.chapter == ["all"] else args.chapter
    profile = load_profile(args.profile)
    for chapter in chapters:
        t0 = time.perf_counter()
        names = train_chapter(chapter, profile, args.kinds, progress=True, tasks=args.tasks)
        if is_main_process():
            print(f"[pemnb.launch] chapter {chapter} at {profile.name}: {len(names)} modules in the cache "
                  f"({time.perf_counter() - t0:.0f} s): {', '.join(names)}")


if __name__ == "__main__":
    main()
