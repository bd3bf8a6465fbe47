"""(2) Answer scoring as the chapters run it vs constrained beam search, RTE with SmolLM2-135M-Instruct.

The reference is the paper's protocol: HF beam search restricted to the answers " yes" / " no", each
closed by a forced end-of-sequence token (``pemnb.evaluate.constrained_generate``). With two one-token
answers, two beams keep every answer, so ``num_beams = 2`` gives the same choice as more beams at less
cost: that is the realistic baseline; 5 beams (what chapter 02's parity check runs) is a third row.

The scorer timed against it is the one the chapters use, :func:`pemnb.evaluate.constrained_scores`:
log p(a | prompt) + log p(EOS | prompt, a) — what beam search ranks — in one tree-masked forward pass
per batch. Its argmax must equal beam search's choice on every timed row (2 and 5 beams), and the
benchmark fails if it does not. The bare answer's score (:func:`pemnb.evaluate.score_choices`) is timed
too, with how often it agrees: it ranks a different quantity.

All sides get the same prompts in the same order (sorted by token length, so no side pays for padding
another does not), the same batch size, and the same repeats, alternated.
"""
from __future__ import annotations

import numpy as np

from pemnb import data
from pemnb.backbones import load_backbone
from pemnb.evaluate import constrained_generate, constrained_scores, score_choices
from pemnb.multitask import prompt

from .common import alternate, peak_rss_mib

BACKBONE = "smollm2-135m"
CHOICES = (" yes", " no")


def run(n: int = 24, repeat: int = 3, batch_size: int = 8) -> dict:
    model, tok = load_backbone(BACKBONE, "causal_lm", device="cpu")
    answer_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in CHOICES]
    if any(len(a) != 1 for a in answer_ids):
        raise RuntimeError(f"expected single-token answers, got {answer_ids}")
    ds = data.subsample(data.load("glue/rte", "validation"), n, seed=0)
    prompts = [prompt("rte", row) for row in ds]
    n_tokens = [len(tok(p)["input_ids"]) for p in prompts]
    order = np.argsort(n_tokens, kind="stable")           # the same batches for every side
    prompts = [prompts[i] for i in order]

    sides = {
        "constrained_scores": lambda: constrained_scores(model, tok, prompts, CHOICES, batch_size=batch_size),
        "beam_2": lambda: constrained_generate(model, tok, prompts, CHOICES, num_beams=len(CHOICES),
                                               batch_size=batch_size),
        "beam_5": lambda: constrained_generate(model, tok, prompts, CHOICES, num_beams=5, batch_size=batch_size),
        "score_choices": lambda: score_choices(model, tok, prompts, CHOICES, batch_size=batch_size),
    }
    out = {k: fn() for k, fn in sides.items()}           # the checks, and the warm-up
    scores = out["constrained_scores"]
    pred = scores.argmax(1)
    beam2, beam5, bare = np.asarray(out["beam_2"]), np.asarray(out["beam_5"]), out["score_choices"].argmax(1)
    t = alternate(sides, repeat, warmup=0)
    return {
        "backbone": BACKBONE, "n": n, "repeat": repeat, "batch_size": batch_size, "answer_token_ids": answer_ids,
        "prompt_tokens_mean": float(np.mean(n_tokens)), "prompt_tokens_max": int(max(n_tokens)),
        "agree_beam_2": float((pred == beam2).mean()), "agree_beam_5": float((pred == beam5).mean()),
        "beams_agree": float((beam2 == beam5).mean()), "agree_bare": float((bare == beam5).mean()),
        "share_yes": float((beam5 == 0).mean()), "smallest_score_gap": float(np.abs(scores[:, 0] - scores[:, 1]).min()),
        "s": t, "peak_mib": {k: peak_rss_mib(sides[k]) for k in ("constrained_scores", "beam_2")},
    }


if __name__ == "__main__":
    print(run())
