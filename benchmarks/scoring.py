"""(2) Label-word scoring vs constrained beam generation on RTE with SmolLM2-135M-Instruct.

The baseline is the paper's protocol as chapter 02 runs it: ``pemnb.evaluate.constrained_generate``,
HF beam search (num_beams = 5) restricted to the answers " yes" / " no", each answer closed by a forced
end-of-sequence token. Beam search ranks whole sequences, so it picks the answer with the largest
log p(a | prompt) + log p(EOS | prompt, a), not the largest log p(a | prompt)
(``pemnb.multitask.answer_eos_scores``).

The scorer timed against it, :func:`score_with_eos`, computes exactly that quantity in one forward
pass per batch: the prompt followed by every answer token, with a tree attention mask so each answer
sees only the prompt (log p(a) from the prompt's last position, log p(EOS | a) from the answer's).
Its argmax must equal beam search's prediction on every example, and the benchmark fails if it does not.

Both sides see the same prompts in the same batches (sorted by token length, so neither side pays for
padding the other does not). ``score_choices`` (the bare answer, what the chapters sweep with) is timed
too, with its agreement with beam search reported.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from pemnb import data
from pemnb.backbones import load_backbone
from pemnb.evaluate import constrained_generate, score_choices
from pemnb.multitask import prompt

from .common import median_seconds, peak_rss_mib

BACKBONE = "smollm2-135m"
CHOICES = (" yes", " no")


@torch.no_grad()
def score_with_eos(model, tokenizer, prompts: Sequence[str], choices: Sequence[str],
                   batch_size: int = 8) -> np.ndarray:
    """log p(a | prompt) + log p(EOS | prompt, a) for single-token answers a, shape (n_prompts, n_choices):
    what constrained beam search ranks, in ONE forward pass per batch.

    The input is the prompt followed by all C answer tokens, with a tree-shaped attention mask: the
    prompt is causal, and each answer token sees the prompt and itself only, at the position right
    after the prompt. So the logits at the prompt's last position give log p(a) for every answer, and
    the logits at each answer's position give log p(EOS | prompt, a) — L + C tokens instead of beam
    search's num_beams × L. Batches are taken in the given order (like ``constrained_generate``);
    prompts are left-padded and positions counted from the first real token, as ``generate`` does.
    Decoder-only models with 4-D attention-mask support (Llama-style) only.
    """
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"score_with_eos needs single-token answers, got {ids}")
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError("score_with_eos is for decoder-only models")
    answers = torch.tensor([i[0] for i in ids])
    n_choices, eos = len(choices), tokenizer.eos_token_id
    model.eval()
    out = np.zeros((len(prompts), n_choices))
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True)
            mask = enc["attention_mask"].bool()
            n, length = mask.shape
            pos = (mask.long().cumsum(-1) - 1).masked_fill(~mask, 1)
            total = length + n_choices
            tree = torch.ones(total, total, dtype=torch.bool).tril()
            tree[length:, length:] = torch.eye(n_choices, dtype=torch.bool)   # answers: prompt + itself
            keys = torch.cat([mask, mask.new_ones(n, n_choices)], 1)
            # (a padding query that sees nothing would give NaN; it sees itself, and nothing reads it)
            mask4 = (tree[None] & keys[:, None, :] | torch.eye(total, dtype=torch.bool)[None])[:, None]
            logits = model(input_ids=torch.cat([enc["input_ids"], answers.expand(n, -1)], 1),
                           attention_mask=mask4,
                           position_ids=torch.cat([pos, (pos[:, -1:] + 1).expand(n, n_choices)], 1),
                           logits_to_keep=n_choices + 1).logits.float()
            logp = torch.log_softmax(logits, -1)
            out[start:start + n] = (logp[:, 0, answers] + logp[:, 1:, eos]).numpy()
    finally:
        tokenizer.padding_side = side
    return out


def run(n: int = 24, repeat: int = 3, repeat_generate: int = 1, batch_size: int = 8) -> dict:
    model, tok = load_backbone(BACKBONE, "causal_lm", device="cpu")
    answer_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in CHOICES]
    if any(len(a) != 1 for a in answer_ids):
        raise RuntimeError(f"expected single-token answers, got {answer_ids}")
    ds = data.subsample(data.load("glue/rte", "validation"), n, seed=0)
    prompts = [prompt("rte", row) for row in ds]
    n_tokens = [len(tok(p)["input_ids"]) for p in prompts]
    order = np.argsort(n_tokens, kind="stable")           # the same batches for both sides
    prompts = [prompts[i] for i in order]

    scorer = lambda: score_with_eos(model, tok, prompts, CHOICES, batch_size=batch_size)
    bare = lambda: score_choices(model, tok, prompts, CHOICES, batch_size=batch_size)
    generate = lambda: constrained_generate(model, tok, prompts, CHOICES, num_beams=5, batch_size=batch_size)

    p_gen = np.asarray(generate())
    s_eos = scorer()
    p_eos, p_bare = s_eos.argmax(1), bare().argmax(1)
    gap = np.abs(s_eos[:, 0] - s_eos[:, 1])
    t_score = median_seconds(scorer, repeat, warmup=0)
    t_bare = median_seconds(bare, repeat, warmup=0)
    t_gen = median_seconds(generate, repeat_generate, warmup=0)
    return {
        "backbone": BACKBONE, "n": n, "repeat": repeat, "repeat_generate": repeat_generate,
        "batch_size": batch_size, "answer_token_ids": answer_ids,
        "prompt_tokens_mean": float(np.mean(n_tokens)), "prompt_tokens_max": int(max(n_tokens)),
        "agree_eos_generate": float((p_eos == p_gen).mean()), "identical": bool((p_eos == p_gen).all()),
        "agree_bare_generate": float((p_bare == p_gen).mean()),
        "smallest_score_gap": float(gap.min()), "share_yes": float((p_gen == 0).mean()),
        "score_s": t_score, "bare_s": t_bare, "generate_s": t_gen,
        "ratio": t_gen / t_score, "ratio_bare": t_gen / t_bare,
        "score_peak_mib": peak_rss_mib(scorer), "bare_peak_mib": peak_rss_mib(bare),
        "generate_peak_mib": peak_rss_mib(generate),
    }


if __name__ == "__main__":
    print(run())
