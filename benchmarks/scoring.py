"""(2) Label-word scoring vs constrained beam generation on RTE with SmolLM2-135M-Instruct.

Same prompts, same answers (" yes" / " no", one token each): ``score_choices`` reads the next-token
distribution once per batch; ``constrained_generate`` runs HF beam search (num_beams=5) restricted to
the answers. The predictions are compared; ``generate_answer_only`` shows why they can differ (the
forced end-of-sequence step). ``score_last_token`` is a faster scorer proposed here: it asks the model for the logits of
the last position only (``logits_to_keep=1``) instead of all positions, which skips most of the LM head
and the (batch × length × vocabulary) logits tensor.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from pemnb import data
from pemnb.backbones import load_backbone
from pemnb.evaluate import constrained_generate, length_buckets, score_choices

from .common import median_seconds, peak_rss_mib

BACKBONE = "smollm2-135m"
TEMPLATE = "Does {sentence1} imply that {sentence2}? Please answer yes or no."
CHOICES = (" yes", " no")


@torch.no_grad()
def score_last_token(model, tokenizer, prompts: Sequence[str], choices: Sequence[str],
                     batch_size: int = 16) -> np.ndarray:
    """Log-probability of each single-token answer after each prompt, shape (n_prompts, n_choices);
    like ``score_choices`` for single-token answers, but only the last position's logits are computed."""
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"score_last_token needs single-token answers, got {ids}")
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(prompts), len(choices)))
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for idx in length_buckets([len(p) for p in prompts], batch_size):
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            logits = model(**enc, logits_to_keep=1).logits[:, -1].float()
            out[idx] = torch.log_softmax(logits, -1)[:, [i[0] for i in ids]].cpu().numpy()
    finally:
        tokenizer.padding_side = side
    return out


@torch.no_grad()
def generate_answer_only(model, tokenizer, prompts: Sequence[str], choices: Sequence[str], num_beams: int = 5,
                         batch_size: int = 8) -> list[int]:
    """Like ``constrained_generate`` for single-token answers, but generation stops after the answer
    (max_new_tokens=1) instead of forcing an end-of-sequence token after it. The forced EOS step adds
    log p(eos | prompt, answer) to each beam's score, so beam search then ranks answers by
    log p(a) + log p(eos | a) rather than log p(a); without it, it ranks exactly as ``score_choices``."""
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"generate_answer_only needs single-token answers, got {ids}")
    first = [i[0] for i in ids]
    model.eval()
    preds: list[int] = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True)
            gen = model.generate(**enc, num_beams=num_beams, max_new_tokens=1, do_sample=False,
                                 prefix_allowed_tokens_fn=lambda _, sent: first,
                                 pad_token_id=tokenizer.pad_token_id)
            preds += [first.index(t) for t in gen[:, -1].tolist()]
    finally:
        tokenizer.padding_side = side
    return preds


def run(n: int = 24, repeat: int = 3, repeat_generate: int = 1) -> dict:
    model, tok = load_backbone(BACKBONE, "causal_lm", device="cpu")
    answer_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in CHOICES]
    if any(len(a) != 1 for a in answer_ids):
        raise RuntimeError(f"expected single-token answers, got {answer_ids}")
    ds = data.subsample(data.load("glue/rte", "validation"), n, seed=0)
    prompts = [TEMPLATE.format(**row) for row in ds]
    n_tokens = [len(tok(p)["input_ids"]) for p in prompts]

    score = lambda: score_choices(model, tok, prompts, CHOICES, batch_size=16)
    fast = lambda: score_last_token(model, tok, prompts, CHOICES, batch_size=16)
    generate = lambda: constrained_generate(model, tok, prompts, CHOICES, num_beams=5, batch_size=8)

    p_score, p_fast, p_gen = score().argmax(1), fast().argmax(1), np.asarray(generate())
    p_only = np.asarray(generate_answer_only(model, tok, prompts, CHOICES))
    t_score = median_seconds(score, repeat, warmup=0)
    t_fast = median_seconds(fast, repeat, warmup=0)
    t_gen = median_seconds(generate, repeat_generate, warmup=0)
    return {
        "backbone": BACKBONE, "n": n, "repeat": repeat, "repeat_generate": repeat_generate,
        "answer_token_ids": answer_ids, "prompt_tokens_mean": float(np.mean(n_tokens)),
        "prompt_tokens_max": int(max(n_tokens)),
        "agree_score_generate": float((p_score == p_gen).mean()),
        "agree_fast_score": float((p_fast == p_score).mean()),
        "agree_score_generate_answer_only": float((p_only == p_score).mean()),
        "score_s": t_score, "fast_s": t_fast, "generate_s": t_gen,
        "ratio": t_gen / t_score, "ratio_fast": t_gen / t_fast,
        "score_peak_mib": peak_rss_mib(score), "fast_peak_mib": peak_rss_mib(fast),
        "generate_peak_mib": peak_rss_mib(generate),
    }


if __name__ == "__main__":
    print(run())
