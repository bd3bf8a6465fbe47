"""Response time of the λ explorer at `small`, one response per λ of a few, through `Explorer.respond`:
compose, write through the bench's StateWriter, measure.

    PEMNB_PROGRESS=0 .venv/bin/python -m benchmarks.explorer_response [00|02|03] [threads]

00: MiniLM-L6, LoRA merge of two modules trained 4 steps each, 64 SST-2 validation rows (the time per
    response does not depend on how well the modules are trained); also times the StateWriter alone.
02: SmolLM2-135M, LoRA merge, constrained answers on 8 MNLI and 8 RTE evaluation rows.
03: SmolLM2-135M, LoRA negation, 8 fresh continuations of 32 tokens scored by alt-profanity-check.
Prints the rows' times in ms.
"""
import sys
import time

import pandas as pd
import torch

from pemnb import data
from pemnb import explorer as X
from pemnb.profiles import load_profile
from pemnb.sweep import pair


def explorer_for(chapter: str, p):
    if chapter == "00":
        from pemnb.classify import ClassifierBench

        bench = ClassifierBench(p, "glue/sst2", "lora", progress=False)
        train = data.subsample(data.load("glue/sst2", "train"), 64, seed=0)
        a = bench.train(train.select(range(32)), tag="explorer-timing-a", steps=4)
        b = bench.train(train.select(range(32, 64)), tag="explorer-timing-b", steps=4)
        batches = bench.batches(data.subsample(data.load("glue/sst2", "validation"), 64, seed=1))
        return bench, X.Method(pair("paper", a, b), X.classifier_scorer(bench, batches))
    if chapter == "02":
        from pemnb import multitask as M

        s = M.settings(p)
        tasks = {t: M.load_task(t, s, seed=p.seed) for t in M.TASKS}
        bench = M.make_bench(p, "lora", s)
        fmt = M.prompt_format(bench, s)
        few = {t: M.EvalSet(t, d.eval.select(range(min(8, len(d.eval)))), fmt, bench.tokenizer) for t, d in tasks.items()}
        theta = bench.identity()
        return bench, X.Method(pair("paper", theta, theta), X.choice_scorer(bench, few, s.eval_batch))
    if chapter == "03":
        from pemnb import arithmetic as A
        from pemnb import unlearning as U
        from pemnb.evaluate import load_toxicity_scorer
        from pemnb.generative import DecoderBench

        cfg = U.settings(p)
        bench = DecoderBench(p, "lora", progress=False)
        theta = bench.identity()
        score = X.toxicity_scorer(bench, load_toxicity_scorer("profanity"), U.PROMPT, 8,
                                  max_new_tokens=cfg.max_new_tokens, seed=0)
        return bench, X.Method(lambda lam: A.negate(theta, "lora", lam), score)
    raise SystemExit(f"chapter must be 00, 02 or 03, got {chapter!r}")


def main(chapter: str = "00", threads: int = 1) -> None:
    torch.set_num_threads(threads)
    p = load_profile("small")
    bench, method = explorer_for(chapter, p)
    ex = X.Explorer({"m": method}, p.lam_grid, pd.DataFrame({"lam": [0.0], "method": ["m"], "y": [0.0]}), "y")
    ex.respond(0.5)  # warm-up
    times = ex.timings([0.25, 0.5, 0.75, 1.0] * (3 if chapter == "00" else 1))
    print(f"chapter {chapter}, torch threads {torch.get_num_threads()}, {len(times)} responses (ms):")
    print(times[["compose_ms", "score_ms", "total_ms"]].describe().loc[["50%", "min", "max"]].round(2).to_string())
    if chapter == "00":
        state = method.compose(0.5)
        writes = []
        for _ in range(51):
            t0 = time.perf_counter()
            bench.use(state)
            writes.append(time.perf_counter() - t0)
        print(f"StateWriter write alone: median {1e3 * sorted(writes)[25]:.3f} ms")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "00", int(sys.argv[2]) if len(sys.argv) > 2 else 1)
