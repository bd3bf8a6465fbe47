"""(3) Length-bucketed evaluation batches (EvalBatches) vs per-batch dynamic padding, MiniLM on SST-2.

The realistic baseline is what ``transformers.Trainer`` does at evaluation: batches in dataset order,
each padded to its own longest example (``DataCollatorWithPadding``). EvalBatches sorts the examples by
length first, so each batch pads to nearly its own length. Fixed padding to 128 tokens
(``padding="max_length"``) is the third row. All sides evaluate the same token ids with the same model
and batch size; batches are built before the timed region (tokenising is not timed); the sides are
alternated (:func:`benchmarks.common.alternate`) and their predictions compared.
"""
from __future__ import annotations

import numpy as np
import torch

from pemnb import data
from pemnb.backbones import load_backbone
from pemnb.evaluate import EvalBatches

from .common import alternate, peak_rss_mib

BACKBONE, TASK, MAX_LENGTH = "minilm-l6", "glue/sst2", 128


def run(n: int = 256, batch_size: int = 32, repeat: int = 3) -> dict:
    from transformers import DataCollatorWithPadding

    model, tok = load_backbone(BACKBONE, "classification", 2, seed=0, device="cpu")
    model.eval()
    ds = data.subsample(data.load(TASK, "validation"), n, seed=0)
    examples = data.tokenize_classification(ds, TASK, tok, MAX_LENGTH)
    bucketed = EvalBatches(examples, tok.pad_token_id, batch_size)
    feats = [{k: v for k, v in e.items() if k != "labels"} for e in examples]
    collator = DataCollatorWithPadding(tok, return_tensors="pt")
    dynamic = [collator(feats[i:i + batch_size]) for i in range(0, len(feats), batch_size)]
    fixed_collator = DataCollatorWithPadding(tok, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt")
    fixed = [fixed_collator(feats[i:i + batch_size]) for i in range(0, len(feats), batch_size)]

    @torch.no_grad()
    def in_order(batches):
        return np.concatenate([model(**b).logits.float().numpy() for b in batches])

    sides = {"bucketed": lambda: bucketed.logits(model), "dynamic": lambda: in_order(dynamic),
             "fixed": lambda: in_order(fixed)}
    logits = {k: fn() for k, fn in sides.items()}
    t = alternate(sides, repeat, warmup=0)  # warmed by the checks above
    tokens = {"bucketed": sum(int(b["input_ids"].numel()) for b in bucketed.batches),
              "dynamic": sum(int(b["input_ids"].numel()) for b in dynamic),
              "fixed": sum(int(b["input_ids"].numel()) for b in fixed)}
    lengths = [len(e["input_ids"]) for e in examples]
    pred = logits["bucketed"].argmax(1)
    return {
        "backbone": BACKBONE, "task": TASK, "n": n, "batch_size": batch_size, "repeat": repeat,
        "tokens_mean": float(np.mean(lengths)), "tokens_max": int(max(lengths)), "tokens": tokens,
        "agree": {k: float((logits[k].argmax(1) == pred).mean()) for k in ("dynamic", "fixed")},
        "max_abs_logit_diff": {k: float(np.abs(logits[k] - logits["bucketed"]).max()) for k in ("dynamic", "fixed")},
        "s": t, "peak_mib": {k: peak_rss_mib(fn) for k, fn in sides.items()},
    }


if __name__ == "__main__":
    print(run())
