"""The decoder side: prompt→answer and plain-text LM examples, 128-token chunk pairs, and a bench that
holds one generative backbone with one module attached (train cached, then score answers and
perplexity — every state written into the live model in place)."""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from . import arithmetic
from .backbones import frozen_dtype, get_backbone, load_backbone
from .cache import Cache, code_version, fingerprint
from .classify import is_main_process, use_one_thread_for_tiny_models
from .evaluate import constrained_scores, perplexity
from .modules import attach, lora_scaling, read_state, write_state
from .sweep import WritesInPlace
from .profiles import Profile
from .train import train_module


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_answer_examples(tokenizer, prompts: Sequence[str], answers: Sequence[str], max_length: int,
                           encoder_decoder: bool = False) -> list[dict]:
    """Supervised examples where only the answer (and a closing EOS) is scored.

    Decoder-only: input = prompt + answer + EOS, labels = -100 on the prompt. Encoder-decoder (T5):
    input = prompt, labels = answer + EOS. Prompts are cut from the left so the answer always fits.
    Prompts are tokenised with special tokens, answers without, matching evaluation.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts for {len(answers)} answers")
    eos = [tokenizer.eos_token_id]
    out = []
    for p, a in zip(prompts, answers):
        # The prompt carries the tokenizer's special tokens (LLaMA's BOS, T5's closing </s>) exactly as
        # evaluate.constrained_scores tokenises prompts at evaluation time; the answer carries none.
        p_ids, a_ids = tokenizer(p)["input_ids"], _ids(tokenizer, a) + eos
        if encoder_decoder:
            out.append({"input_ids": p_ids[-max_length:], "attention_mask": [1] * len(p_ids[-max_length:]),
                        "labels": a_ids[:max_length]})
            continue
        room = max(1, max_length - len(a_ids))
        p_ids = p_ids[-room:]
        ids = (p_ids + a_ids)[:max_length]
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                    "labels": ([-100] * len(p_ids) + a_ids)[:max_length]})
    return out


def lm_examples(tokenizer, texts: Iterable[str], max_length: int) -> list[dict]:
    """Plain language-modelling examples (every token scored), one per non-empty text, EOS-terminated."""
    out = []
    for t in texts:
        ids = (_ids(tokenizer, t) + [tokenizer.eos_token_id])[:max_length]
        if len(ids) > 1:
            out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
    return out


def chunk_pairs(tokenizer, texts: Iterable[str], chunk: int = 128) -> list[tuple[list[int], list[int]]]:
    """The paper's LM data for domain transfer: all text concatenated, cut into `chunk`-token pieces,
    and consecutive pieces paired as (input = chunk i, target = chunk i+1)."""
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    stream: list[int] = []
    for t in texts:
        stream += _ids(tokenizer, t)
    pieces = [stream[i:i + chunk] for i in range(0, len(stream) - chunk + 1, chunk)]
    return list(zip(pieces[:-1], pieces[1:]))


def pair_examples(pairs: Sequence[tuple[list[int], list[int]]], encoder_decoder: bool = False) -> list[dict]:
    """Token-id (input, target) pairs → training examples scored on the target only."""
    out = []
    for src, tgt in pairs:
        if encoder_decoder:
            out.append({"input_ids": list(src), "attention_mask": [1] * len(src), "labels": list(tgt)})
        else:
            ids = list(src) + list(tgt)
            out.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                        "labels": [-100] * len(src) + list(tgt)})
    return out


TRAIN_METHOD = "pemnb.generative:DecoderBench.train"  # training code outside TRAINING_CODE's modules


class DecoderBench(WritesInPlace):
    """One generative backbone (decoder-only, or T5) with one module attached."""

    def __init__(self, profile: Profile, kind: str, *, backbone: str | None = None, cache: Cache | None = None,
                 lora_r: int | None = None, lora_alpha: int | None = None, dropout: float = 0.0,
                 target_modules: Sequence[str] | None = None, progress: bool = True):
        """`dropout` and `target_modules` configure a LoRA module (default: no dropout, the family's
        targets), e.g. the instruction chapter's Alpaca-LoRA layout."""
        self.profile, self.kind, self.progress = profile, kind, progress
        self.backbone = backbone or profile.decoder
        self.cache = cache if cache is not None else Cache()
        self.encoder_decoder = get_backbone(self.backbone).family == "t5"
        task = "seq2seq" if self.encoder_decoder else "causal_lm"
        use_one_thread_for_tiny_models(self.backbone)
        self.dtype = frozen_dtype(self.backbone, kind, profile.dtype)
        model, self.tokenizer = load_backbone(self.backbone, task, seed=profile.seed, device=profile.device,
                                              dtype=self.dtype)
        self.r, self.alpha = lora_r or profile.lora_r, lora_alpha or profile.lora_alpha
        self.model = attach(model, kind, r=self.r, alpha=self.alpha, dropout=dropout, init_seed=profile.seed,
                            target_modules=target_modules)
        self.init_state = read_state(self.model)

    # ------------------------------------------------------------------------------------ data
    def qa_examples(self, prompts: Sequence[str], answers: Sequence[str]) -> list[dict]:
        return prompt_answer_examples(self.tokenizer, prompts, answers, self.profile.max_length,
                                      self.encoder_decoder)

    def text_examples(self, texts: Iterable[str]) -> list[dict]:
        return lm_examples(self.tokenizer, texts, self.profile.max_length)

    # ------------------------------------------------------------------------------------ train
    def train(self, examples: Sequence[dict], *, tag: str, steps: int | None = None, lr: float | None = None,
              batch_size: int | None = None, seed: int | None = None, start: Mapping | None = None,
              extra_key: Mapping | None = None, weight_decay: float = 0.0) -> dict[str, torch.Tensor]:
        """Train a module on tokenised `examples` (cached), from the shared init or from `start`
        (a state to continue training, e.g. an instruction-tuned LoRA)."""
        p = self.profile
        steps, lr = steps or p.steps, lr or p.lr[self.kind]
        batch_size, seed = batch_size or p.batch_size, p.seed if seed is None else seed
        parts = {"what": "decoder-module", "backbone": self.backbone, "kind": self.kind, "tag": tag,
                 "r": self.r, "alpha": self.alpha, "init_seed": p.seed, "seed": seed, "steps": steps, "lr": lr,
                 "batch_size": batch_size, "data": fingerprint(examples), "n": len(examples),
                 "start": fingerprint([{k: v.tolist() for k, v in sorted(start.items())}]) if start else None,
                 "code": code_version((TRAIN_METHOD,)),  # the method that calls the loop (the cache adds the loop)
                 **(extra_key or {})}
        if weight_decay:  # only in the key when used, so earlier modules stay valid
            parts["weight_decay"] = weight_decay
        if self.dtype != "float32":  # a module trained on half-precision weights is another module
            parts["dtype"] = self.dtype
        hit = self.cache.get_module(parts)
        if hit is not None:
            return hit[0]
        write_state(self.model, start if start is not None else self.init_state)
        result = train_module(self.model, examples, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                              weight_decay=weight_decay,
                              pad_token_id=self.tokenizer.pad_token_id, checkpoint_dir=self.cache.scratch(parts),
                              desc=f"{self.kind} {tag}", progress=self.progress, micro_batch_size=p.micro_batch)
        state = read_state(self.model)
        self.forget_writer()  # training may have replaced parameter objects: look them up again
        if is_main_process():
            self.cache.put_module(parts, state, self.kind, {"losses": result.losses[-20:], "seconds": result.seconds,
                                                             **{k: v for k, v in parts.items() if k != "start"}})
            self.cache.drop_scratch(parts)
        return state

    # ------------------------------------------------------------------------------------ evaluate
    def choice_scores(self, state, prompts: Sequence[str], choices: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """Scores (n_prompts, n_choices) of the allowed answers under module `state`, as the paper's
        constrained decoding ranks them (:func:`pemnb.evaluate.constrained_scores`: the answer and the
        end of sequence after it), so the argmax is constrained beam search's answer."""
        self.use(state)
        return constrained_scores(self.model, self.tokenizer, prompts, choices, batch_size, progress=self.progress)

    def perplexity(self, state, text: str, max_length: int = 1024, stride: int = 512,
                   max_tokens: int | None = None) -> float:
        self.use(state)
        return perplexity(self.model, self.tokenizer, text, max_length, stride, max_tokens, progress=self.progress)

    def scaling(self) -> float:
        return lora_scaling(self.model)

    def identity(self) -> dict[str, torch.Tensor]:
        """The state that leaves the backbone unchanged."""
        return arithmetic.identity_like(self.init_state, self.kind)
