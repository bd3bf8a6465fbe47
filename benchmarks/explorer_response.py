"""Response time of the λ explorer at `small`: MiniLM-L6 with LoRA on SST-2, scored on 64 validation rows.

    PEMNB_PROGRESS=0 .venv/bin/python -m benchmarks.explorer_response [threads]

Two modules are trained for 4 steps each (the time per response does not depend on how well they are
trained), then every λ of the profile's grid is answered three times through `Explorer.respond`: compose
(`pemnb.sweep.pair`), write through the bench's StateWriter, evaluate. Prints medians and extremes in ms,
and the time of the StateWriter's write alone.
"""
import sys
import time

import pandas as pd
import torch

from pemnb import data
from pemnb import explorer as X
from pemnb.classify import ClassifierBench
from pemnb.profiles import load_profile
from pemnb.sweep import pair


def main(threads: int = 1, rows: int = 64) -> None:
    torch.set_num_threads(threads)
    p = load_profile("small")
    bench = ClassifierBench(p, "glue/sst2", "lora", progress=False)
    train = data.subsample(data.load("glue/sst2", "train"), 64, seed=0)
    a = bench.train(train.select(range(32)), tag="explorer-timing-a", steps=4)
    b = bench.train(train.select(range(32, 64)), tag="explorer-timing-b", steps=4)
    batches = bench.batches(data.subsample(data.load("glue/sst2", "validation"), rows, seed=1))
    ex = X.Explorer({"addition": X.Method(pair("paper", a, b), X.classifier_scorer(bench, batches))}, p.lam_grid,
                    pd.DataFrame({"lam": [0.0], "method": ["addition"], "accuracy": [0.5]}), "accuracy")
    ex.respond(0.5)  # warm-up
    times = pd.concat([ex.timings() for _ in range(3)])
    print(f"torch threads {torch.get_num_threads()}, {len(times)} responses on {rows} SST-2 rows (ms):")
    print(times[["compose_ms", "score_ms", "total_ms"]].describe().loc[["50%", "min", "max"]].round(2).to_string())
    state = pair("paper", a, b)(0.5)
    writes = []
    for _ in range(51):
        t0 = time.perf_counter()
        bench.use(state)
        writes.append(time.perf_counter() - t0)
    print(f"StateWriter write alone: median {1e3 * sorted(writes)[25]:.3f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
