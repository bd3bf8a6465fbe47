"""What a `paper` run of each chapter needs on a GPU: peak memory and hours, as ESTIMATES.

Derived, not measured: parameters are counted on the paper's backbones built from their published
configs on PyTorch's meta device (no weights, no download) with pemnb's own module attached; tokens per
example are counted on the shipped data with the smoke tokenizer (WordPiece, a proxy for each model's
own tokenizer; the paper's Yelp/Amazon reviews are not shipped, so chapter 04 uses the mean review
lengths stated in REVIEW_TOKENS); steps, batch sizes, micro-batches, λ grids and evaluation sizes are
read from the chapters' paper settings. Then

- time = FLOPs / achieved throughput: training 6·N·tokens for a full fine-tune, 4·N·tokens with frozen
  weights (no weight gradients), a forward pass 2·N·tokens; sampling one token costs the larger of its
  FLOPs and one read of the weights (decoding is bound by memory bandwidth);
- memory = weights (+ gradients, AdamW's two moments and the θ_pre copy pemnb keeps for a full
  fine-tune's task vector) + activations of one micro-batch at its longest row, ≈ 34·h·s·b per layer
  in 16-bit (Korthikanti et al., 2022; doubled in fp32) + the logits + 1 GiB of CUDA context.

Attention's s² terms, data loading, evaluation batching overheads and checkpoint writes are left out,
so real runs take longer; treat the hours as a lower bound to within a factor of about two.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

import pandas as pd

from .profiles import Profile, load_profile

GIB = 2 ** 30


@dataclass(frozen=True)
class GPU:
    """The GPU an estimate is for: memory, achieved throughput and memory bandwidth."""

    name: str
    memory_gib: float
    flops: float             # achieved FLOP/s on training and scoring (a third of a half-precision peak)
    bandwidth: float         # bytes/s (bounds sampling, one weight read per generated token)


# The paper ran on 24 GB GPUs. RTX 3090 / A5000 class: ~71 TFLOP/s dense half-precision peak, 936 GB/s.
PAPER_GPU = GPU("24 GB GPU (RTX 3090 / A5000 class), 25 TFLOP/s achieved, 936 GB/s", 24.0, 25e12, 936e9)

# Published configs of the paper's backbones (the hub's config.json values that decide sizes).
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "roberta-base": ("RobertaConfig", dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                                           num_attention_heads=12, intermediate_size=3072,
                                           max_position_embeddings=514, type_vocab_size=1)),
    "t5-base": ("T5Config", dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)),
    "t5-small": ("T5Config", dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8)),
    "gpt2-large": ("GPT2Config", dict(vocab_size=50257, n_embd=1280, n_layer=36, n_head=20, n_positions=1024)),
    "llama-7b": ("LlamaConfig", dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                     num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=2048)),
}

# Chapter 04's paper data is not shipped: sizes of yelp_polarity / amazon_polarity (hub dataset cards)
# and an ASSUMED mean review length in tokens (not counted here).
REVIEW_ROWS = {"yelp": {"train": 560_000, "test": 38_000}, "amazon": {"train": 3_600_000, "test": 400_000}}
REVIEW_TOKENS = {"yelp": 180, "amazon": 100}
# Sizes of the paper's evaluation and training sets that are not (fully) shipped.
GLUE_VALIDATION = {"cola": 1043, "mnli": 9815, "mrpc": 408, "qnli": 5463, "qqp": 40430, "rte": 277, "sst2": 872,
                   "stsb": 1500}
TOXIC_COMMENTS = 32_464          # Civil Comments train rows with toxicity > 0.8 (the paper)
WIKITEXT103_TEST_TOKENS = 280_000  # GPT-2 BPE tokens of the wikitext-103-raw test split (≈ 245k words)


@dataclass(frozen=True)
class Size:
    """Counted sizes of one backbone with one module attached."""

    total: int                # parameters of the model with the module
    trainable: int            # what the optimizer updates
    hidden: int
    layers: int               # per stack (encoder and decoder each, for T5)
    vocab: int
    encoder: int = 0          # T5: parameters run once per input token (embedding excluded)
    decoder: int = 0          # T5: parameters run once per target token (the tied head included)


@lru_cache(maxsize=None)
def count(backbone: str, kind: str, task: str = "causal_lm", lora_r: int = 8, targets: tuple | None = None) -> Size:
    """Parameter counts of `backbone` with a module of `kind` attached the way pemnb attaches it,
    built on the meta device (no memory, no download)."""
    import torch
    import transformers as tf

    from .modules import attach

    cls_name, cfg = ARCHITECTURES[backbone]
    config = getattr(tf, cls_name)(**cfg)
    auto = {"classification": tf.AutoModelForSequenceClassification, "seq2seq": tf.AutoModelForSeq2SeqLM,
            "causal_lm": tf.AutoModelForCausalLM}[task]
    with torch.device("meta"):
        model = auto.from_config(config)
        enc = dec = 0
        if config.model_type == "t5":
            shared = model.shared.weight.numel()
            enc = sum(p.numel() for p in model.encoder.parameters()) - shared
            dec = sum(p.numel() for p in model.decoder.parameters())
        model = attach(model, kind, r=lora_r, alpha=lora_r, target_modules=list(targets) if targets else None)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None) or config.n_embd
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None) or config.n_layer
    return Size(total, trainable, hidden, layers, config.vocab_size, enc, dec)


@lru_cache(maxsize=None)
def _tokenizer():
    from .backbones import smoke_tokenizer

    return smoke_tokenizer()


def token_lengths(texts, max_length: int | None = None) -> tuple[float, int]:
    """(mean, longest) tokens per text with the smoke tokenizer, capped at `max_length`."""
    tok = _tokenizer()
    n = [len(ids) for ids in tok(list(texts), add_special_tokens=True)["input_ids"]]
    if max_length:
        n = [min(x, max_length) for x in n]
    return (sum(n) / len(n), max(n)) if n else (0.0, 0)


@dataclass
class Job:
    """One training run or one block of evaluation work of a chapter."""

    what: str
    backbone: str
    kind: str
    task: str = "causal_lm"
    train_steps: int = 0
    batch: int = 0
    micro: int | None = None
    tokens_in: float = 0.0          # mean tokens per example (input; decoder-only: whole sequence)
    tokens_out: float = 0.0         # T5: mean target tokens per example
    longest_in: int = 0
    longest_out: int = 0
    forward_examples: float = 0.0   # evaluation: examples scored with one forward pass
    generated_tokens: float = 0.0   # evaluation: tokens sampled one at a time (× beams)
    decode_batch: int = 16
    lora_r: int = 8
    targets: tuple | None = None
    dtype_bytes: int = 4
    extra: dict = field(default_factory=dict)

    def size(self) -> Size:
        return count(self.backbone, self.kind, self.task, self.lora_r, self.targets)

    def flops(self) -> tuple[float, float]:
        """(training FLOPs, forward FLOPs) of this job."""
        s = self.size()
        if s.encoder:  # T5: the encoder runs on inputs, the decoder on targets
            per_example = 2 * (s.encoder * self.tokens_in + s.decoder * self.tokens_out)
        else:
            per_example = 2 * s.total * self.tokens_in
        factor = 3 if self.kind == "fft" else 2  # backward: weights and inputs, or inputs only
        return (factor * per_example * self.train_steps * self.batch, per_example * self.forward_examples)

    def seconds(self, gpu: GPU) -> float:
        train, forward = self.flops()
        s = self.size()
        # Sampling: each decoding step of a batch costs its FLOPs or one read of the weights, whichever
        # takes longer (small batches are bound by memory bandwidth).
        steps = self.generated_tokens / max(self.decode_batch, 1)
        per_step = max(2 * s.total * self.decode_batch / gpu.flops, s.total * self.dtype_bytes / gpu.bandwidth)
        return (train + forward) / gpu.flops + steps * per_step

    def memory_gib(self) -> float:
        """Peak GPU memory of this job (training at its micro-batch, or evaluation)."""
        s = self.size()
        frozen = s.total - s.trainable
        mem = frozen * self.dtype_bytes + s.trainable * 4
        lm = self.task != "classification"
        if self.train_steps:
            mem += s.trainable * 12                  # fp32 gradients + AdamW's two moments
            if self.kind == "fft":
                mem += s.total * 4                   # θ_pre, kept to read the task vector τ = θ − θ_pre
            b = self.micro or self.batch
            act = 34 * s.hidden * b * s.layers * (self.longest_in + self.longest_out)
            act *= 2 if self.dtype_bytes == 4 else 1  # fp32 activations are twice 16-bit ones
            logits = 3 * b * (self.longest_out or self.longest_in) * s.vocab * 4 if lm else 0
            mem += act + logits
        elif lm:                                     # one batch's logits (fp32) dominate what scoring adds
            mem += self.decode_batch * max(self.longest_out, 1) * s.vocab * 4 * 2
        return mem / GIB + 1.0                       # + CUDA context and allocator slack


# ------------------------------------------------------------------------------------------- chapters
def _rows(name: str, split: str, n: int = 400):
    from . import data

    try:
        return data.subsample(data.load(name, split), n, seed=0)
    except data.DataNotFound:
        return None


def _glue_texts(task: str, n: int = 400) -> list[str]:
    from . import data

    spec = data.get_spec(f"glue/{task}")
    split = "train" if data.local_file(f"glue/{task}", "train") else ("validation_matched" if task == "mnli"
                                                                       else "validation")
    rows = _rows(f"glue/{task}", split, n)
    return [" ".join(str(r[f]) for f in spec.text_fields) for r in rows]


def jobs_00(p: Profile) -> list[Job]:
    mean, longest = token_lengths(_glue_texts("sst2"), p.max_length)
    out = []
    for kind in ("lora", "ia3"):
        for tag, steps in (("sst2", p.steps), ("half a", p.steps // 2), ("half b", p.steps // 2)):
            out.append(Job(f"{kind} {tag}", p.encoder, kind, "classification", steps, p.batch_size, p.micro_batch,
                           mean, 0, longest, 0, lora_r=p.lora_r))
        evals = (4 + 3 * len(p.lam_grid)) * GLUE_VALIDATION["sst2"]  # 4 states, negate/ablate/merge sweeps
        out.append(Job(f"{kind} evaluation", p.encoder, kind, "classification", tokens_in=mean, longest_in=longest,
                       forward_examples=evals, lora_r=p.lora_r))
    return out


def jobs_01(p: Profile) -> list[Job]:
    from . import distribution

    s = distribution.settings(p)
    out = []
    for task in s.tasks:
        mean, longest = token_lengths(_glue_texts(task), s.max_length)
        for kind in s.kinds:
            for sub in ("s0", "s1", "fullset"):
                n = 2 * p.train_size if sub == "fullset" else p.train_size
                out.append(Job(f"{task} {kind} {sub}", p.encoder, kind, "classification", int(s.steps[kind]),
                               p.batch_size, p.micro_batch, mean, 0, longest, 0, lora_r=p.lora_r,
                               extra={"rows": n}))
            out.append(Job(f"{task} {kind} λ sweep", p.encoder, kind, "classification", tokens_in=mean,
                           longest_in=longest, forward_examples=(len(s.lam_grid) + 1) * GLUE_VALIDATION[task],
                           lora_r=p.lora_r))
    return out


def jobs_02(p: Profile) -> list[Job]:
    from . import multitask

    s = multitask.settings(p)
    out = []
    for task in multitask.TASKS:
        rows = _rows("glue/rte", "train") if task == "rte" else _rows("glue/mnli", "validation_matched")
        mean, longest = token_lengths([multitask.prompt(task, r) for r in rows], s.max_length)
        n_eval = GLUE_VALIDATION[task]
        for kind in s.kinds:
            hp = s.hparams[task][kind]
            out.append(Job(f"{task} {kind}", s.backbone, kind, "seq2seq", int(hp["steps"]), int(hp["batch"]),
                           s.micro_batch, mean, 2, longest, 2, lora_r=s.lora_r))
            out.append(Job(f"{task} {kind} λ sweep", s.backbone, kind, "seq2seq", tokens_in=mean, tokens_out=2,
                           longest_in=longest, longest_out=2, forward_examples=len(s.lam_grid) * n_eval,
                           lora_r=s.lora_r))
    return out


def jobs_03(p: Profile) -> list[Job]:
    from . import unlearning
    from .train import steps_for_epochs

    c = unlearning.settings(p)
    rows = _rows("civil_comments", "test", 600)
    mean, longest = token_lengths([t for t in rows["text"]], c.max_length or p.max_length)
    backbone = p.decoder
    out = []
    for kind in c.kinds:
        steps = steps_for_epochs(TOXIC_COMMENTS, c.epochs[kind], c.batch[kind])
        out.append(Job(f"toxic {kind}", backbone, kind, "causal_lm", steps, c.batch[kind], c.micro_batch,
                       mean, 0, longest, 0, lora_r=p.lora_r))
        lams = len([x for x in c.lam_grid if x > 0]) + 1 + len(c.ablation_lams.get(kind, ()))
        ppl_tokens = c.ppl_tokens or WIKITEXT103_TEST_TOKENS
        windows = ppl_tokens / c.ppl_stride
        out.append(Job(f"{kind}: {lams} measurements", backbone, kind, "causal_lm", tokens_in=c.ppl_max_length,
                       longest_in=c.ppl_max_length, forward_examples=lams * windows,
                       generated_tokens=lams * c.n_samples * (c.max_new_tokens + 10),
                       decode_batch=c.sample_batch, lora_r=p.lora_r))
    return out


def jobs_04(p: Profile) -> list[Job]:
    from . import domain_transfer
    from .train import steps_for_epochs

    S = domain_transfer.settings(p)
    out = []
    for backbone in S.backbones:
        for kind in S.kinds:
            for domain in S.domains:
                n, tok = REVIEW_ROWS[domain]["train"], REVIEW_TOKENS[domain]
                h = S.hparams[backbone][kind]
                cls_tokens = min(tok, S.max_length)
                out.append(Job(f"{backbone} {kind} cls({domain})", backbone, kind, "seq2seq",
                               steps_for_epochs(n, h["cls"]["epochs"], S.batch_size), S.batch_size,
                               S.micro_batch, cls_tokens, 2, S.max_length, 2, lora_r=S.lora_r))
                pairs = n * tok // S.chunk
                out.append(Job(f"{backbone} {kind} LM({domain})", backbone, kind, "seq2seq",
                               steps_for_epochs(pairs, h["lm"]["epochs"], S.batch_size), S.batch_size,
                               S.micro_batch, S.chunk, S.chunk, S.chunk, S.chunk,
                               lora_r=S.lora_r))
            tests = sum(REVIEW_ROWS[d]["test"] + S.dev_rows for d in S.domains)
            out.append(Job(f"{backbone} {kind} evaluation", backbone, kind, "seq2seq",
                           tokens_in=sum(REVIEW_TOKENS.values()) / 2, tokens_out=2, longest_in=S.max_length,
                           longest_out=2, forward_examples=(len(S.lam_grid) + 2) * tests, lora_r=S.lora_r))
    return out


def jobs_05(p: Profile) -> list[Job]:
    from . import instruct
    from .backbones import get_backbone

    c = instruct.settings(p)
    rows = _rows("civil_comments", "test", 300)
    prompts = [instruct.alpaca_prompt("Write a comment like this one.") + t for t in rows["text"]]
    mean, longest = token_lengths(prompts, c.max_length)
    half = 2 if get_backbone(c.backbone).half and p.dtype != "float32" else 4
    targets = tuple(c.targets) if c.targets else None
    n_states = 2 + len(c.lams) + 1
    return [
        Job("θ_tox (continued from Alpaca-LoRA)", c.backbone, "lora", "causal_lm", int(c.toxic_steps),
            int(c.batch_size), c.micro_batch, mean, 0, longest, 0, lora_r=c.lora_r, targets=targets,
            dtype_bytes=half),
        Job(f"responses: {n_states} models × {2 * c.n_test} instructions", c.backbone, "lora", "causal_lm",
            tokens_in=60, longest_in=c.max_length,
            generated_tokens=n_states * 2 * c.n_test * c.response_tokens * c.num_beams,
            decode_batch=c.gen_batch * c.num_beams, lora_r=c.lora_r, targets=targets, dtype_bytes=half),
    ]


def jobs_06(p: Profile) -> list[Job]:
    from . import merge_chapter
    from . import multitask

    s = merge_chapter.settings(p)
    methods, grid = len(merge_chapter.SWEPT), len(s.lam_grid)
    # Besides its λ sweep, each method's merge is evaluated once more by merge_chapter.operator_rows: the
    # three-module analogy where the scenario has a third module (chapter 01's pairs: the fullset module),
    # the subtraction θ₁ ⊕ ⊖θ₂ where the modules carry no head (chapter 02's T5 pair).
    out = []
    for task in s.distribution_tasks:
        mean, longest = token_lengths(_glue_texts(task), p.max_length)
        out.append(Job(f"{task}: {methods} methods × ({grid} λ + analogy)", p.encoder, "lora", "classification",
                       tokens_in=mean, longest_in=longest,
                       forward_examples=methods * (grid + 1) * GLUE_VALIDATION[task], lora_r=p.lora_r))
    if s.multitask:
        ms = multitask.settings(p)
        rows = _rows("glue/mnli", "validation_matched")
        mean, longest = token_lengths([multitask.prompt("mnli", r) for r in rows], ms.max_length)
        n = GLUE_VALIDATION["mnli"] + GLUE_VALIDATION["rte"]
        out.append(Job(f"MNLI + RTE: {methods} methods × ({grid} λ + subtraction)", ms.backbone, "lora", "seq2seq",
                       tokens_in=mean, tokens_out=2, longest_in=longest, longest_out=2,
                       forward_examples=methods * (grid + 1) * n, lora_r=ms.lora_r))
    return out


JOBS = {"00": jobs_00, "01": jobs_01, "02": jobs_02, "03": jobs_03, "04": jobs_04, "05": jobs_05, "06": jobs_06}
TITLES = {"00": "module arithmetic (SST-2)", "01": "distribution generalization", "02": "multi-tasking",
          "03": "unlearning", "04": "domain transfer", "05": "instruction detox", "06": "merge methods"}


def chapter_estimate(chapter: str, profile: Profile | None = None, gpu: GPU = PAPER_GPU) -> dict[str, Any]:
    """One chapter's ESTIMATE: backbones, modules trained, training steps, tokens trained, the peak
    memory of its most demanding job, and GPU hours of training and of evaluation."""
    p = profile or load_profile("paper")
    jobs = JOBS[chapter](p)
    train = [j for j in jobs if j.train_steps]
    peak = max(jobs, key=lambda j: j.memory_gib())
    tokens = sum(j.train_steps * j.batch * (j.tokens_in + j.tokens_out) for j in train)
    return {
        "chapter": f"{chapter} {TITLES[chapter]}",
        "backbones": ", ".join(dict.fromkeys(j.backbone for j in jobs)),
        "modules trained": len(train),
        # batch = micro-batch × accumulated passes (one process), for each batch size the chapter trains at
        "batch = micro × passes": ", ".join(dict.fromkeys(
            f"{j.batch} = {j.micro or j.batch} × {math.ceil(j.batch / (j.micro or j.batch))}" for j in train)),
        "training steps": sum(j.train_steps for j in train),
        "tokens trained (M)": round(tokens / 1e6, 1),
        "peak memory (GiB)": round(peak.memory_gib(), 1),
        "peak job": peak.what + (f" (micro-batch {peak.micro or peak.batch})" if peak.train_steps else ""),
        "fits": peak.memory_gib() <= gpu.memory_gib,
        "training (GPU h)": round(sum(j.seconds(gpu) for j in train) / 3600, 2),
        "evaluation (GPU h)": round(sum(j.seconds(gpu) for j in jobs if not j.train_steps) / 3600, 2),
    }


def estimates(profile: Profile | None = None, gpu: GPU = PAPER_GPU) -> pd.DataFrame:
    """Per chapter, the GPU memory and time a run at `profile` (default: paper) needs on `gpu`:
    ESTIMATES derived from counted parameters, tokens and steps (see this module's docstring)."""
    df = pd.DataFrame([chapter_estimate(c, profile, gpu) for c in JOBS]).set_index("chapter")
    df.attrs["gpu"] = gpu.name
    df.attrs["note"] = ("estimates from counted parameters, tokens and steps; a lower bound to within about 2×; "
                        "evaluation of chapter 05 leaves out the judge's API calls")
    return df


def markdown(df: pd.DataFrame) -> str:
    """The table as GitHub markdown (for the README's GPU section)."""
    cols = ["backbones", "modules trained", "batch = micro × passes", "peak memory (GiB)", "peak job",
            "training (GPU h)", "evaluation (GPU h)"]
    lines = ["| chapter | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in df.iterrows():
        lines.append(f"| {name} | " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)
