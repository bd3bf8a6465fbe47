"""(5) bfloat16 autocast vs float32, on chapter 01's own SST-2 rows with MiniLM-L6 (``small`` settings).

Evaluation: every evaluation chapter 01 makes for one task and kind — the merge at each λ of its grid
and the fullset module, on its λ-selection and its evaluation rows — run in float32 and under bf16
autocast (:func:`pemnb.precision.bf16_agreement`, sides alternated, median of `repeat`); predictions
compared row by row. The modules are chapter 01's own (``distribution.train_modules``, from pemnb's cache
when it has them).

Training (``train=True``): chapter 01's s0 module trained twice from the same initialisation, seed and
batches, in float32 and under bf16 autocast (one run per side, training is not repeated), each then
evaluated in float32 on the evaluation rows.
"""
from __future__ import annotations

import time

import numpy as np

from pemnb import arithmetic, distribution as D
from pemnb.precision import bf16_agreement
from pemnb.profiles import load_profile
from pemnb.train import train_module

TASK, KIND = "sst2", "lora"


def run(repeat: int = 3, train: bool = True, steps: int | None = None, eval_rows: int | None = None,
        kinds: tuple[str, ...] = ("lora", "ia3", "fft")) -> dict:
    profile = load_profile("small")
    settings = D.settings(profile)
    if eval_rows is not None:  # --quick
        settings = settings.replace(select_max=eval_rows, eval_max=eval_rows)
    td = D.task_data(TASK, profile, settings)
    out = {"backbone": profile.encoder, "task": TASK, "repeat": repeat, "kinds": {}}
    for kind in kinds:
        bench, modules = D.train_modules(profile, td, kind, settings, progress=False)
        bench.autocast_bf16 = False  # the modules are float32-trained; each side sets its own precision
        sets = {"select": bench.batches(td.select), "eval": bench.batches(td.evalset)}
        states = {f"λ={lam:g}": arithmetic.merge(modules["s0"], modules["s1"], lam, kind)
                  for lam in settings.lam_grid}
        states["fullset"] = modules["fullset"]
        rows, agree_n, fp32_s, bf16_s, max_diff = 0, 0.0, 0.0, 0.0, 0.0
        for state in states.values():
            bench.use(state)
            for b in sets.values():
                r = bf16_agreement(bench.model, b, repeat)
                rows += r["rows"]
                agree_n += r["agreement"] * r["rows"]
                fp32_s, bf16_s = fp32_s + r["fp32_s"], bf16_s + r["bf16_s"]
                max_diff = max(max_diff, r["max_abs_logit_diff"])
        out["kinds"][kind] = {
            "kind": kind, "states": len(states), "rows_per_state": {k: b.n for k, b in sets.items()},
            "predictions": rows, "agreement": agree_n / rows, "disagreements": int(round(rows - agree_n)),
            "max_abs_logit_diff": max_diff, "eval_fp32_s": fp32_s, "eval_bf16_s": bf16_s, "eval_ratio": fp32_s / bf16_s}
    total = sum(k["predictions"] for k in out["kinds"].values())
    out["agreement"] = sum(k["agreement"] * k["predictions"] for k in out["kinds"].values()) / total
    out["eval_ratio"] = (sum(k["eval_fp32_s"] for k in out["kinds"].values())
                         / sum(k["eval_bf16_s"] for k in out["kinds"].values()))
    if train:
        bench, _ = D.train_modules(profile, td, KIND, settings, progress=False)
        bench.autocast_bf16 = False
        sets = {"eval": bench.batches(td.evalset)}
        steps = steps or int(settings.steps[KIND])
        p = bench.profile
        examples = bench.examples(td.s0)
        trained = {}
        for bf16 in (False, True):
            bench.use(bench.init_state)
            t0 = time.perf_counter()
            result = train_module(bench.model, examples, steps=steps, lr=p.lr[KIND], batch_size=p.batch_size,
                                  seed=p.seed, pad_token_id=bench.tokenizer.pad_token_id, progress=False,
                                  autocast_bf16=bf16)
            seconds = time.perf_counter() - t0
            bench.forget_writer()
            logits = sets["eval"].logits(bench.model)
            trained[bf16] = {"s": seconds, "accuracy": float((logits.argmax(1) == sets["eval"].labels).mean()),
                             "final_loss": float(np.mean(result.losses[-5:])), "pred": logits.argmax(1)}
        out.update(train_steps=steps, train_batch=p.batch_size, train_max_length=p.max_length,
                   train_fp32_s=trained[False]["s"], train_bf16_s=trained[True]["s"],
                   train_ratio=trained[False]["s"] / trained[True]["s"],
                   accuracy_fp32=trained[False]["accuracy"], accuracy_bf16=trained[True]["accuracy"],
                   loss_fp32=trained[False]["final_loss"], loss_bf16=trained[True]["final_loss"],
                   trained_agreement=float((trained[False]["pred"] == trained[True]["pred"]).mean()))
    return out


if __name__ == "__main__":
    print(run())
