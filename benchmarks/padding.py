"""(3) Dynamic length-bucketed evaluation (EvalBatches) vs fixed padding to 128 tokens, MiniLM on SST-2.

Both evaluate the same tokenised examples (the same token ids) with the same model and batch size;
the fixed side pads every example to 128 tokens and keeps the dataset order, as a Trainer with
``padding="max_length"`` does. Batches are built before the timed region on both sides (tokenising
is not timed). Predictions are compared.
"""
from __future__ import annotations

import numpy as np
import torch

from pemnb import data
from pemnb.backbones import load_backbone
from pemnb.evaluate import EvalBatches

from .common import median_seconds, peak_rss_mib

BACKBONE, TASK, MAX_LENGTH = "minilm-l6", "glue/sst2", 128


def run(n: int = 256, batch_size: int = 32, repeat: int = 3) -> dict:
    model, tok = load_backbone(BACKBONE, "classification", 2, seed=0, device="cpu")
    ds = data.subsample(data.load(TASK, "validation"), n, seed=0)
    examples = data.tokenize_classification(ds, TASK, tok, MAX_LENGTH)
    dynamic = EvalBatches(examples, tok.pad_token_id, batch_size)
    ids = torch.full((len(examples), MAX_LENGTH), tok.pad_token_id)
    mask = torch.zeros((len(examples), MAX_LENGTH), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[i, :len(e["input_ids"])] = 1
    fixed = [{"input_ids": ids[i:i + batch_size], "attention_mask": mask[i:i + batch_size]}
             for i in range(0, len(examples), batch_size)]

    @torch.no_grad()
    def fixed_logits():
        return np.concatenate([model(**b).logits.float().numpy() for b in fixed])

    p_dyn, p_fix = dynamic.logits(model), fixed_logits()
    lengths = [len(e["input_ids"]) for e in examples]
    padded = sum(int(b["input_ids"].numel()) for b in dynamic.batches)
    t_dyn = median_seconds(lambda: dynamic.logits(model), repeat, warmup=0)  # warmed by the check above
    t_fix = median_seconds(fixed_logits, repeat, warmup=0)
    return {
        "backbone": BACKBONE, "task": TASK, "n": n, "batch_size": batch_size, "repeat": repeat,
        "tokens_mean": float(np.mean(lengths)), "tokens_max": int(max(lengths)),
        "dynamic_tokens": padded, "fixed_tokens": len(examples) * MAX_LENGTH,
        "agree": float((p_dyn.argmax(1) == p_fix.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(p_dyn - p_fix).max()),
        "dynamic_s": t_dyn, "fixed_s": t_fix, "ratio": t_fix / t_dyn,
        "dynamic_peak_mib": peak_rss_mib(lambda: dynamic.logits(model)),
        "fixed_peak_mib": peak_rss_mib(fixed_logits),
    }


if __name__ == "__main__":
    print(run())
