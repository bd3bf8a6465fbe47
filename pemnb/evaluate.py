"""Evaluation: GLUE metrics, classifier predictions, label-word scoring and constrained generation,
perplexity with a sliding window, sampling, and toxicity scorers (Detoxify or a shipped fallback)."""
from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np
import torch

# --------------------------------------------------------------------------------------- metrics
METRICS = {  # GLUE convention: what each task reports, the first one is the headline
    "cola": ("mcc",), "sst2": ("accuracy",), "mrpc": ("accuracy", "f1"), "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearman"), "mnli": ("accuracy",), "qnli": ("accuracy",), "rte": ("accuracy",),
}


def task_of(name: str) -> str:
    return name.split("/")[-1]


def headline_metric(task: str) -> str:
    """The metric a task is ranked by (Matthews corr. for CoLA, Pearson for STS-B, else accuracy)."""
    return METRICS.get(task_of(task), ("accuracy",))[0]


def glue_metrics(task: str, predictions, labels) -> dict[str, float]:
    """GLUE metrics for one task. `predictions`: class ids, or scores for STS-B (regression)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"{len(p)} predictions for {len(y)} labels")
    if len(y) == 0:
        raise ValueError("no examples to score")
    out = {}
    for m in METRICS.get(task_of(task), ("accuracy",)):
        if m == "accuracy":
            out[m] = float(accuracy_score(y, p))
        elif m == "f1":
            out[m] = float(f1_score(y, p))
        elif m == "mcc":
            out[m] = float(matthews_corrcoef(y, p))
        elif m == "pearson":
            out[m] = float(pearsonr(p, y)[0]) if np.std(p) > 0 else 0.0
        elif m == "spearman":
            out[m] = float(spearmanr(p, y)[0]) if np.std(p) > 0 else 0.0
    return out


# --------------------------------------------------------------------------------------- batching
def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of example indices sorted by length, so each batch pads to nearly its own length."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


class EvalBatches:
    """Tokenised, length-bucketed, padded evaluation batches, built once and reused at every λ."""

    def __init__(self, examples: Sequence[dict], pad_token_id: int, batch_size: int = 64, device=None,
                 autocast_bf16: bool = False):
        from .train import pad_collate

        self.autocast_bf16 = autocast_bf16  # compute in bfloat16 (pemnb.precision), weights untouched

        collate = pad_collate(pad_token_id)
        self.n = len(examples)
        self.buckets = length_buckets([len(e["input_ids"]) for e in examples], batch_size)
        feats = [{k: v for k, v in e.items() if k != "labels"} for e in examples]
        self.batches = [{k: v.to(device) if device else v for k, v in collate([feats[i] for i in b]).items()}
                        for b in self.buckets]
        self.labels = np.asarray([e["labels"] for e in examples]) if examples and "labels" in examples[0] else None

    @torch.no_grad()
    def logits(self, model) -> np.ndarray:
        """Model outputs for every example, in the original order."""
        from .precision import autocast_bf16

        model.eval()
        device = next(model.parameters()).device
        out = [None] * self.n
        for idx, batch in zip(self.buckets, self.batches):
            with autocast_bf16(device, self.autocast_bf16):
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            logits = logits.float().cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = logits[j]
        return np.stack(out)


def classify(model, batches: EvalBatches, task: str, *, with_predictions: bool = False) -> dict:
    """GLUE metrics of a sequence classifier on prepared batches; with `with_predictions`, also the
    per-row predictions they come from (key ``predictions``, in the rows' order: class indices, or
    scores for a regression task), so bootstrap intervals need no further forward pass."""
    logits = batches.logits(model)
    preds = logits[:, 0] if logits.shape[1] == 1 else logits.argmax(-1)
    metrics = glue_metrics(task, preds, batches.labels)
    if with_predictions:
        metrics["predictions"] = [float(x) for x in preds] if logits.shape[1] == 1 else [int(x) for x in preds]
    return metrics


# ----------------------------------------------------------------------------- answer-word scoring
def _answer_ids(tokenizer, choices: Sequence[str]) -> list[list[int]]:
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    if any(len(x) == 0 for x in ids):
        raise ValueError(f"a choice tokenises to nothing: {choices}")
    return ids


@torch.no_grad()
def score_choices(model, tokenizer, prompts: Sequence[str], choices: Sequence[str], batch_size: int = 16,
                  progress: bool = False) -> np.ndarray:
    """Log-probability of each allowed answer after each prompt, shape (n_prompts, n_choices).

    Single-token answers (e.g. " yes"/" no"): ONE forward pass per batch reads the next-token
    distribution, exact. Multi-token answers: the mean token log-probability (length-normalised), one
    pass per choice. Works for decoder-only and encoder-decoder (T5) models. Prompts are tokenised with
    the tokenizer's special tokens, as :func:`pemnb.generative.prompt_answer_examples` does in training.

    Note: constrained beam search (:func:`constrained_generate`) ranks answer *and* the EOS that closes
    it, so a model can pick differently (zero-shot SmolLM2 on RTE: 47% agreement); the chapters score
    with :func:`constrained_scores`, which ranks what beam search ranks.
    """
    from .progress import tqdm

    model.eval()
    device = next(model.parameters()).device
    ans = _answer_ids(tokenizer, choices)
    enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    single = all(len(a) == 1 for a in ans)
    out = np.zeros((len(prompts), len(choices)), dtype=np.float64)
    order = length_buckets([len(p) for p in prompts], batch_size)
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # so the last position is the prompt's last token
    try:
        for idx in tqdm(order, desc="scoring", disable=not progress):
            batch_prompts = [prompts[i] for i in idx]
            enc = tokenizer(batch_prompts, return_tensors="pt", padding=True).to(device)
            if single and not enc_dec:
                logp = torch.log_softmax(_last_logits(model, enc).float(), -1)
                out[idx] = logp[:, [a[0] for a in ans]].cpu().numpy()
                continue
            for c, a in enumerate(ans):
                out[idx, c] = _sequence_logprob(model, tokenizer, enc, a, enc_dec).cpu().numpy()
    finally:
        tokenizer.padding_side = pad_side
    return out


def _last_logits(model, enc) -> torch.Tensor:
    """Next-token logits at the last position only: projecting every position onto a 49k-word vocabulary
    is most of a small decoder's cost, and scoring needs one position."""
    try:
        return model(**enc, logits_to_keep=1).logits[:, -1]
    except TypeError:  # architectures without logits_to_keep
        return model(**enc).logits[:, -1]


def _sequence_logprob(model, tokenizer, enc, answer: list[int], enc_dec: bool) -> torch.Tensor:
    """Mean log-probability of `answer` following each (left-padded) prompt in `enc`."""
    n = enc["input_ids"].shape[0]
    a = torch.tensor(answer, device=enc["input_ids"].device).expand(n, -1).contiguous()  # T5's loss views it
    if enc_dec:
        logits = model(**enc, labels=a).logits.float()
        logp = torch.log_softmax(logits, -1).gather(-1, a.unsqueeze(-1)).squeeze(-1)
        return logp.mean(-1)
    ids = torch.cat([enc["input_ids"], a], 1)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(a)], 1)
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    k = a.shape[1]
    logp = torch.log_softmax(logits[:, -k - 1:-1], -1).gather(-1, a.unsqueeze(-1)).squeeze(-1)
    return logp.mean(-1)


@torch.no_grad()
def constrained_scores(model, tokenizer, prompts: Sequence[str], choices: Sequence[str], batch_size: int = 16,
                       progress: bool = False) -> np.ndarray:
    """The score constrained beam search (:func:`constrained_generate`) gives each allowed answer, shape
    (n_prompts, n_choices): log p(answer | prompt) + log p(EOS | prompt, answer), divided by the generated
    length (answer + EOS) to the power of the model's ``length_penalty``, as HF beam search ranks
    finished hypotheses. Its argmax is the paper's constrained decoding's answer (checked in the tests
    and by ``make benchmark``) whenever beam search keeps every answer, i.e. num_beams ≥ len(choices).

    The chapters score with this, not with the bare log p(answer) (:func:`score_choices`): beam search
    emits the answer AND the end-of-sequence token it is then forced to, and a model that would rather
    go on after " yes" (zero-shot SmolLM2 on RTE: beam search says yes on 88% of the rows, the bare
    score agrees with it on 47%) ranks the two differently.

    Decoder-only models with single-token answers: ONE forward pass per batch, the prompt followed by
    every answer token under a tree-shaped attention mask (each answer sees the prompt and itself, at
    the position after the prompt), so the last prompt position gives log p(a) and each answer's
    position log p(EOS | a). Otherwise (multi-token answers, encoder-decoder models): one pass per
    choice over answer + EOS (T5: the encoder runs once per batch). Positions are counted from the first
    real token of a left-padded prompt, as ``generate`` counts them.
    """
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    targets = [a + [tokenizer.eos_token_id] for a in _answer_ids(tokenizer, choices)]
    enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    tree = not enc_dec and all(len(t) == 2 for t in targets)
    penalty = float(getattr(getattr(model, "generation_config", None), "length_penalty", 1.0) or 1.0)
    out = np.zeros((len(prompts), len(choices)), dtype=np.float64)
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # the prompt's last token is the last position
    try:
        lengths = [len(x) for x in tokenizer(list(prompts))["input_ids"]] if prompts else []
        for idx in tqdm(length_buckets(lengths, batch_size), desc="scoring", disable=not progress):
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            if tree:
                total = _tree_scores(model, enc, [t[0] for t in targets], tokenizer.eos_token_id)
            else:
                memory = model.get_encoder()(**enc) if enc_dec else None
                total = torch.stack([_target_logprob(model, enc, t, memory) for t in targets], 1)
            out[idx] = total.double().cpu().numpy() / np.array([len(t) ** penalty for t in targets])
    finally:
        tokenizer.padding_side = pad_side
    return out


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: 0 at each row's first real token (padding gets 1, unread)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


def _tree_scores(model, enc, answers: list[int], eos: int) -> torch.Tensor:
    """log p(a) + log p(EOS | a) for single-token answers `answers`, one tree-masked pass (see above)."""
    mask = enc["attention_mask"].bool()
    n, length = mask.shape
    c = len(answers)
    pos = _positions(mask)
    total = length + c
    tree = torch.ones(total, total, dtype=torch.bool, device=mask.device).tril()
    tree[length:, length:] = torch.eye(c, dtype=torch.bool, device=mask.device)  # an answer sees the prompt + itself
    keys = torch.cat([mask, mask.new_ones(n, c)], 1)
    # (a padding query that sees nothing would give NaN; it sees itself, and nothing reads it)
    mask4 = (tree[None] & keys[:, None, :] | torch.eye(total, dtype=torch.bool, device=mask.device)[None])[:, None]
    ids = torch.tensor(answers, device=mask.device)
    logits = model(input_ids=torch.cat([enc["input_ids"], ids.expand(n, -1)], 1), attention_mask=mask4,
                   position_ids=torch.cat([pos, (pos[:, -1:] + 1).expand(n, c)], 1),
                   logits_to_keep=c + 1).logits.float()
    logp = torch.log_softmax(logits, -1)
    return logp[:, 0, ids] + logp[:, 1:, eos]


def _target_logprob(model, enc, target: list[int], memory=None) -> torch.Tensor:
    """Σ log p(target tokens) after each prompt of `enc` (decoder-only: appended; T5: as the decoder's
    output, `memory` being the encoder's output for `enc`)."""
    n = enc["input_ids"].shape[0]
    t = torch.tensor(target, device=enc["input_ids"].device).expand(n, -1).contiguous()  # T5's loss views it
    if memory is not None:
        logits = model(encoder_outputs=memory, attention_mask=enc["attention_mask"], labels=t).logits
    else:
        k = t.shape[1]
        pos = _positions(enc["attention_mask"])
        step = torch.arange(1, k + 1, device=pos.device)
        logits = model(input_ids=torch.cat([enc["input_ids"], t], 1),
                       attention_mask=torch.cat([enc["attention_mask"], torch.ones_like(t)], 1),
                       position_ids=torch.cat([pos, pos[:, -1:] + step], 1), logits_to_keep=k + 1).logits[:, :-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, t.unsqueeze(-1)).squeeze(-1).sum(-1)


@torch.no_grad()
def constrained_generate(model, tokenizer, prompts: Sequence[str], choices: Sequence[str], num_beams: int = 5,
                         batch_size: int = 8, progress: bool = False) -> list[int]:
    """Index of the answer HF ``generate`` picks with beam search restricted to `choices`.

    Parity with the paper's constrained decoding. transformers 5 moved ``force_words_ids`` to a hub
    repository, so the restriction is a ``prefix_allowed_tokens_fn`` over a trie of the answers.
    """
    from .progress import tqdm

    model.eval()
    device = next(model.parameters()).device
    ans = _answer_ids(tokenizer, choices)
    eos = tokenizer.eos_token_id
    enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    longest = max(len(a) for a in ans)
    preds: list[int] = []
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="generating", disable=not progress):
            batch = list(prompts[start:start + batch_size])
            enc = tokenizer(batch, return_tensors="pt", padding=True).to(device)
            width = 1 if enc_dec else enc["input_ids"].shape[1]  # T5's decoder starts with one token

            def allowed(_, sent):
                done = sent[width:].tolist()
                nxt = {a[len(done)] for a in ans if len(a) > len(done) and a[:len(done)] == done}
                return sorted(nxt) if nxt else [eos]

            gen = model.generate(**enc, num_beams=num_beams, max_new_tokens=longest + 1, do_sample=False,
                                 prefix_allowed_tokens_fn=allowed, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=eos)
            for row in gen[:, width:].tolist():
                row = [t for t in row if t not in (eos, tokenizer.pad_token_id)]
                preds.append(next((i for i, a in enumerate(ans) if a == row[:len(a)]), -1))
    finally:
        tokenizer.padding_side = pad_side
    return preds


# --------------------------------------------------------------------------------------- language
@torch.no_grad()
def window_nlls(model, tokenizer, text: str, max_length: int = 1024, stride: int = 512,
                max_tokens: int | None = None, progress: bool = False) -> tuple[list[float], list[int]]:
    """(summed negative log-likelihood, scored tokens) of each window of the sliding-window recipe
    (HF's): windows of `max_length` tokens moved by `stride`, each token scored once with up to
    max_length − stride tokens of context. :func:`perplexity` is exp(Σ nll / Σ tokens); the per-window
    values are the rows a bootstrap interval of a perplexity resamples (no further forward pass)."""
    from .progress import tqdm

    if stride <= 0 or stride > max_length:
        raise ValueError(f"need 0 < stride <= max_length, got stride={stride}, max_length={max_length}")
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:, :max_tokens]
    n = ids.shape[1]
    if n < 2:
        raise ValueError("text is too short to score")
    nlls, counts, prev_end = [], [], 0
    for begin in tqdm(range(0, n, stride), desc="perplexity", disable=not progress):
        end = min(begin + max_length, n)
        trg = end - prev_end
        chunk = ids[:, begin:end].to(device)
        labels = chunk.clone()
        labels[:, :-trg] = -100
        out = model(input_ids=chunk, labels=labels)
        scored = int((labels[:, 1:] != -100).sum())
        nlls.append(float(out.loss) * scored)
        counts.append(scored)
        prev_end = end
        if end == n:
            break
    return nlls, counts


def perplexity_of(nlls: Sequence[float], counts: Sequence[int]) -> float:
    """exp(Σ nll / Σ tokens): the perplexity of windows' summed NLLs and token counts (:func:`window_nlls`);
    also the statistic a bootstrap over windows recomputes."""
    total = sum(counts)
    if total <= 0:
        raise ValueError("no scored tokens")
    return math.exp(sum(nlls) / total)


def perplexity(model, tokenizer, text: str, max_length: int = 1024, stride: int = 512,
               max_tokens: int | None = None, progress: bool = False) -> float:
    """Perplexity of `text` with a sliding window (:func:`window_nlls`)."""
    return perplexity_of(*window_nlls(model, tokenizer, text, max_length, stride, max_tokens, progress))


@torch.no_grad()
def sample(model, tokenizer, prompt: str, n: int, *, top_k: int = 50, temperature: float = 1.0,
           max_new_tokens: int = 64, seed: int = 0, batch_size: int = 16, progress: bool = True,
           desc: str = "sampling") -> list[str]:
    """`n` sampled continuations of `prompt`: the new text only (as the paper's unlearning code scores
    it), whitespace-stripped. Top-k / temperature sampling in batches; batch b is seeded with seed + b,
    so the samples do not depend on what ran before."""
    from .progress import tqdm

    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    model.eval()
    device = next(model.parameters()).device
    enc = tokenizer(prompt, return_tensors="pt").to(device)
    width = enc["input_ids"].shape[1]
    texts: list[str] = []
    with tqdm(total=n, desc=desc, disable=not progress) as bar:
        for b, start in enumerate(range(0, n, batch_size)):
            k = min(batch_size, n - start)
            torch.manual_seed(seed + b)
            gen = model.generate(**{key: v.expand(k, -1) for key, v in enc.items()}, do_sample=True,
                                 top_k=top_k, temperature=temperature, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
            texts += [t.strip() for t in tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)]
            bar.update(k)
    return texts


# --------------------------------------------------------------------------------------- generation
@torch.no_grad()
def generate_texts(model, tokenizer, prompts: Sequence[str], *, batch_size: int = 8, max_new_tokens: int = 64,
                   temperature: float = 0.0, top_p: float = 1.0, num_beams: int = 1, repetition_penalty: float = 1.0,
                   seed: int = 0, max_input_tokens: int = 1024, add_special_tokens: bool = False,
                   progress: bool = True, desc: str = "generating") -> list[str]:
    """Batched generation for many prompts: length-bucketed, left-padded; returns only the new text.

    Greedy (or beam search with `num_beams` > 1) when temperature == 0, else sampling, seeded per batch so
    the result does not depend on which other prompts share the run. `add_special_tokens`: let the
    tokenizer add BOS (as LLaMA's Alpaca-LoRA was trained); pemnb's training examples carry none.
    """
    from .progress import tqdm

    model.eval()
    device = next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"][-max_input_tokens:] for p in prompts]
    out: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for idx in tqdm(length_buckets([len(e) for e in encoded], batch_size), desc=desc, disable=not progress):
        rows = [encoded[i] for i in idx]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        torch.manual_seed(seed + idx[0])
        kw = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, num_beams=num_beams,
                             repetition_penalty=repetition_penalty, pad_token_id=pad,
                             eos_token_id=tokenizer.eos_token_id, **kw)
        for j, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[j, width:], skip_special_tokens=True).strip()
    return out


@torch.no_grad()
def answer_probabilities(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], *, batch_size: int = 8,
                         max_input_tokens: int = 1024, add_special_tokens: bool = False,
                         progress: bool = False, desc: str = "answer probabilities") -> np.ndarray:
    """Probability that the model's next output after each prompt is exactly each answer (and nothing
    longer among `answers`), shape (n_prompts, n_answers); not normalised over the answers.

    This is how G-Eval (Liu et al., 2023) reads a rating from a judge's token probabilities rather than
    its text. An answer that is one token is read off the next-token distribution. A longer one is the
    product of its tokens' probabilities, read in one pass over the prompt followed by the answer's
    tokens (position ids counted from each left-padded row's first real token, as ``generate`` counts
    them). When one answer's tokens begin another's — "1" and "10" for a tokenizer that writes numbers
    digit by digit, as SmolLM2's — the shorter one's probability is what is left after its nearest
    extensions: P("1") = p("1") − p("1" "0"), since a "1" followed by "0" is the answer "10". Prompts are
    tokenised as :func:`generate_texts` tokenises them, so the probabilities belong to the position
    where generation would start.
    """
    from .progress import tqdm

    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError("answer_probabilities reads a decoder-only model's continuation")
    ids = _answer_ids(tokenizer, answers)
    # One pass per longest token path that some answer needs beyond its last token.
    needed = {tuple(a[:-1]) for a in ids}
    paths = [p for p in needed if not any(q != p and q[:len(p)] == p for q in needed)]
    model.eval()
    device = next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"][-max_input_tokens:] for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    logp = np.zeros((len(prompts), len(answers)), dtype=np.float64)
    for idx in tqdm(length_buckets([len(e) for e in encoded], batch_size), desc=desc, disable=not progress):
        rows = [encoded[i] for i in idx]
        width = max(len(r) for r in rows)
        ids_t = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        for path in paths:
            k = len(path)
            tail = torch.tensor(list(path), dtype=torch.long, device=device).expand(len(idx), k)
            full_mask = torch.cat([mask, torch.ones_like(tail)], 1)
            pos = _positions(full_mask)
            logits = model(input_ids=torch.cat([ids_t, tail], 1), attention_mask=full_mask, position_ids=pos,
                           logits_to_keep=k + 1).logits.float()
            steps = torch.log_softmax(logits, -1)  # steps[:, j]: the distribution after path[:j]
            for c, a in enumerate(ids):
                if tuple(a[:-1]) != path[:len(a) - 1]:
                    continue
                logp[idx, c] = sum(steps[:, j, t] for j, t in enumerate(a)).double().cpu().numpy()
    prob = np.exp(logp)
    keys = [tuple(a) for a in ids]
    complete = prob.copy()
    for c, a in enumerate(keys):
        longer = [d for d, b in enumerate(keys) if len(b) > len(a) and b[:len(a)] == a]
        nearest = [d for d in longer if not any(len(keys[e]) < len(keys[d]) and keys[d][:len(keys[e])] == keys[e]
                                                for e in longer)]
        for d in nearest:
            complete[:, c] -= prob[:, d]
    return np.clip(complete, 0.0, None)


# --------------------------------------------------------------------------------------- toxicity
class ToxicityScorer:
    """Callable texts → toxicity probabilities in [0, 1]; `name` says which model produced them."""

    def __init__(self, name: str, fn: Callable[[list[str]], np.ndarray], note: str = ""):
        self.name, self._fn, self.note = name, fn, note

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        return np.asarray(self._fn(texts), dtype=float) if texts else np.zeros(0)

    def __repr__(self):
        return f"ToxicityScorer({self.name!r})"


def _detoxify(variant: str = "original") -> ToxicityScorer:
    import contextlib
    import io
    from pathlib import Path

    from detoxify import Detoxify
    from detoxify.detoxify import MODEL_URLS

    from .paths import offline

    url = MODEL_URLS[variant]
    ckpt = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not ckpt.exists():
        if offline():
            raise FileNotFoundError(f"Detoxify's {variant!r} weights ({ckpt.name}) are not in torch's hub cache "
                                    "and this run is offline")
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stderr(io.StringIO()):  # torch.hub prints the cache path it downloads to
            torch.hub.download_url_to_file(url, str(ckpt), progress=False)
    # Detoxify unpickles its checkpoint without restriction; load it restricted first, so a file holding
    # anything but tensors and plain data is refused before that happens.
    torch.load(ckpt, map_location="cpu", weights_only=True)
    model = Detoxify(variant, checkpoint=str(ckpt), device="cuda" if torch.cuda.is_available() else "cpu")

    def fn(texts):
        scores = []
        for i in range(0, len(texts), 32):
            scores.extend(np.atleast_1d(model.predict(texts[i:i + 32])["toxicity"]).tolist())
        return np.asarray(scores)

    return ToxicityScorer(f"detoxify-{variant}", fn, "Detoxify (Hanu, 2020), the paper's scorer")


def _profanity() -> ToxicityScorer:
    from profanity_check import predict_prob

    return ToxicityScorer("alt-profanity-check", lambda t: predict_prob(t),
                          "alt-profanity-check: a linear SVM on bag-of-words, shipped inside its wheel. "
                          "It detects profanity, not toxicity in Detoxify's sense; numbers are not "
                          "comparable to the paper's.")


def load_toxicity_scorer(prefer: str = "auto") -> ToxicityScorer:
    """Detoxify when its weights can be had, otherwise alt-profanity-check, with a loud warning.

    prefer: 'auto' (Detoxify, falling back), 'detoxify' (no fallback) or 'profanity'.
    """
    if prefer not in ("auto", "detoxify", "profanity"):
        raise ValueError(f"prefer must be 'auto', 'detoxify' or 'profanity', got {prefer!r}")
    if prefer == "profanity":
        return _profanity()
    try:
        return _detoxify()
    except Exception as e:  # no network for its checkpoint, package missing, …
        if prefer == "detoxify":
            raise
        msg = (f"Detoxify could not be loaded ({type(e).__name__}: {str(e)[:120]}). FALLING BACK to "
               "alt-profanity-check: toxicity numbers below are NOT Detoxify scores and are not comparable "
               "with the paper's.")
        from .plots import in_kernel

        if not in_kernel():  # on a page the banner below says it; a warning would add a temp-file path
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        print("!" * 100 + "\n" + msg + "\n" + "!" * 100)
        return _profanity()
