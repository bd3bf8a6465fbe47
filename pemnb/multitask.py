"""Composition for multi-tasking: MNLI and RTE as prompted generation with constrained answers, one module
per task, and the merge θ = λθ_MNLI + (1−λ)θ_RTE evaluated on both tasks (the paper's §4.2, Figure 6).

Both tasks are text generation with the paper's prompt (official code, ``prompt_run_glue.py``):

- RTE:  ``Does "[sentence1]" imply that "[sentence2]"? Please answer yes or no.``  (0 → yes, 1 → no)
- MNLI: ``Does "[premise]" imply that "[hypothesis]"? Please answer yes, no or maybe.``
  (entailment → yes, neutral → maybe, contradiction → no)

Answers are constrained to the task's words: :func:`pemnb.evaluate.constrained_scores` scores each answer as
the paper's constrained beam search ranks it (answer and the EOS that closes it) in one forward pass per
batch; :func:`pemnb.evaluate.constrained_generate` is that beam search (num_beams = 5), used to check that the
two agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch

from . import arithmetic, data
from .cache import TRAINING_CODE, Cache, fingerprint, state_fingerprint
from .evaluate import constrained_generate, constrained_scores, score_choices
from .profiles import Profile, inclusive_grid
from .settings import ChapterSettings
from .syntax import presentation

CHAPTER = "multitask"
TASKS = ("mnli", "rte")
KINDS = ("fft", "lora", "ia3")

TEMPLATES = {
    "rte": 'Does "{sentence1}" imply that "{sentence2}"? Please answer yes or no.',
    "mnli": 'Does "{premise}" imply that "{hypothesis}"? Please answer yes, no or maybe.',
}
ANSWERS = {"rte": ("yes", "no"), "mnli": ("yes", "no", "maybe")}          # the allowed answers, in choice order
LABEL_WORDS = {"rte": {0: "yes", 1: "no"},                                # GLUE label id → answer word
               "mnli": {0: "yes", 1: "maybe", 2: "no"}}

# Table 8, multi-tasking (MNLI / RTE): learning rate, steps, batch size per module kind.
PAPER_HPARAMS = {
    "mnli": {"fft": {"lr": 2e-4, "steps": 10000, "batch": 128}, "lora": {"lr": 2e-3, "steps": 12000, "batch": 128},
             "ia3": {"lr": 4e-3, "steps": 20000, "batch": 128}},
    "rte": {"fft": {"lr": 2e-4, "steps": 2000, "batch": 32}, "lora": {"lr": 5e-3, "steps": 4000, "batch": 32},
            "ia3": {"lr": 5e-3, "steps": 8000, "batch": 32}},
}

# Chapter settings per profile; `profile.chapter("multitask")` overrides merge on top (see Settings).
#   train_rows / eval_rows: rows per task (None = the whole split)
#   mnli_train_split: "train" (the hub's MNLI train) or "validation_matched" (carve a training part out of it,
#                     disjoint from the evaluation part: the offline data folder has no MNLI train split)
#   chat: wrap prompts in the backbone's chat template (decoder-only instruction-tuned models)
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "backbone": None,  # profile.decoder (smoke-llama)
        "chat": False,
        "train_rows": {"mnli": 64, "rte": 64},
        "eval_rows": {"mnli": 32, "rte": 32},
        "mnli_train_split": "validation_matched",
        "hparams": {t: {k: {"lr": {"fft": 1e-3, "lora": 5e-3, "ia3": 1e-2}[k], "steps": 4, "batch": 8}
                        for k in KINDS} for t in TASKS},
        "lora_r": 4, "lora_alpha": 8,
        "max_length": 64,
        "lam_grid": inclusive_grid(0.0, 1.0, 0.5),
        "kinds": ("lora", "ia3", "fft"), "parity_kind": "lora", "parity_rows": 8, "num_beams": 5,
        "format_probe_rows": 8, "eval_batch": 16,
    },
    "small": {
        # Sized for 40 minutes on 2 CPU cores from costs measured on this machine with ONE thread
        # (SmolLM2-135M): a LoRA training step costs ≈ 9 ms per token (16 × 128 tokens: 18 s), scoring
        # one RTE prompt ≈ 0.27 s. Predicted at one thread: training ≈ 20 min (LoRA/(IA)³ 32 steps and
        # FFT 12 steps of 8 prompts, per task), 15 evaluations of 220 prompts ≈ 15 min, probe and parity
        # ≈ 2 min; two threads are faster. FFT gets fewer steps: each updates (and Adam-tracks) all 135M
        # weights. Training prompts average 52 (MNLI) and 79 (RTE) tokens at max_length 128.
        "backbone": None,  # profile.decoder (smollm2-135m: SmolLM2-135M-Instruct)
        "chat": False,
        "train_rows": {"mnli": 2000, "rte": 2490},
        "eval_rows": {"mnli": 120, "rte": 100},
        "mnli_train_split": "validation_matched",
        "hparams": {t: {"fft": {"lr": 5e-5, "steps": 12, "batch": 8}, "lora": {"lr": 2e-3, "steps": 32, "batch": 8},
                        "ia3": {"lr": 1e-2, "steps": 32, "batch": 8}} for t in TASKS},
        "lora_r": 8, "lora_alpha": 16,
        "max_length": 128,
        "lam_grid": inclusive_grid(0.0, 1.0, 0.25),
        "kinds": ("lora", "ia3", "fft"), "parity_kind": "lora", "parity_rows": 12, "num_beams": 5,
        "format_probe_rows": 16, "eval_batch": 16,
    },
    "paper": {
        "backbone": "t5-base",
        "chat": False,
        "train_rows": {"mnli": None, "rte": None},
        "eval_rows": {"mnli": None, "rte": None},
        "mnli_train_split": "train",
        "hparams": PAPER_HPARAMS,
        "lora_r": 32, "lora_alpha": 32,  # Table 8 gives r = 32; α is not stated (α = r keeps α/r = 1)
        "max_length": 256,
        "lam_grid": inclusive_grid(0.0, 1.0, 0.02),
        "kinds": ("lora", "ia3", "fft"), "parity_kind": "lora", "parity_rows": 200, "num_beams": 5,
        "format_probe_rows": 200, "eval_batch": 64,
        "micro_batch": 32,  # MNLI's batch of 128 in 4 accumulated passes (pemnb.estimates: fits 24 GB)
    },
}


@dataclass(frozen=True)
class Settings(ChapterSettings):
    """Chapter 02's settings (presets above; ``profile.chapter("multitask")`` overrides them)."""

    CHAPTER: ClassVar[str] = CHAPTER
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS
    backbone: str                        # None in a preset: the profile's decoder
    chat: bool                           # wrap prompts in the backbone's chat template
    lora_r: int
    lora_alpha: int
    max_length: int
    kinds: tuple[str, ...]
    hparams: Mapping[str, Mapping[str, Mapping[str, Any]]]   # task → kind → {lr, steps, batch}
    train_rows: Mapping[str, int | None]
    eval_rows: Mapping[str, int | None]
    mnli_train_split: str
    eval_batch: int
    lam_grid: tuple[float, ...]
    format_probe_rows: int
    parity_kind: str
    parity_rows: int
    num_beams: int
    micro_batch: int | None = None       # passes of this many examples accumulate to one batch

    @classmethod
    def derive(cls, profile: Profile, values: dict[str, Any]) -> dict[str, Any]:
        return {**values, "backbone": values["backbone"] or profile.decoder}


def settings(profile: Profile, **overrides: Any) -> Settings:
    """This chapter's settings at `profile` (an unknown profile, field or type raises)."""
    return Settings.for_profile(profile, **overrides)


# ------------------------------------------------------------------------------------------- prompts
def prompt(task: str, row: Mapping[str, Any]) -> str:
    """The paper's prompt for one GLUE row of `task` ('rte' or 'mnli')."""
    if task not in TEMPLATES:
        raise ValueError(f"unknown task {task!r}; expected one of {tuple(TEMPLATES)}")
    return TEMPLATES[task].format(**row)


def answer_index(task: str, label: int) -> int:
    """Index into ANSWERS[task] of the answer a GLUE label stands for (MNLI 1 = neutral → 'maybe' = 2)."""
    words = LABEL_WORDS[task]
    if int(label) not in words:
        raise ValueError(f"{task}: label {label!r} has no answer word (test rows carry label -1)")
    return ANSWERS[task].index(words[int(label)])


@dataclass(frozen=True)
class PromptFormat:
    """How prompts and answers become text for one backbone.

    Decoder-only without chat template: the answer follows the prompt after a space (" yes"), so answers
    are the BPE words with a leading space. With the chat template the answer starts the assistant's turn
    (no space). T5: the answer is the decoder's whole output ("yes").
    """

    chat: bool = False
    encoder_decoder: bool = False

    def text(self, tokenizer, raw_prompt: str) -> str:
        if not self.chat:
            return raw_prompt
        return tokenizer.apply_chat_template([{"role": "user", "content": raw_prompt}], tokenize=False,
                                             add_generation_prompt=True)

    def choices(self, task: str) -> list[str]:
        space = "" if (self.chat or self.encoder_decoder) else " "
        return [space + a for a in ANSWERS[task]]


def with_eos(tokenizer, choices: Sequence[str]) -> list[str]:
    """The answers followed by the end-of-sequence token (as text), checked to tokenise that way."""
    out = [c + tokenizer.eos_token for c in choices]
    for c, text in zip(choices, out):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids != tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]:
            raise ValueError(f"{text!r} does not tokenise to the answer followed by EOS: {ids}")
    return out


@torch.no_grad()
def answer_eos_scores(model, tokenizer, prompts: Sequence[str], choices: Sequence[str]) -> np.ndarray:
    """log p(answer) + log p(EOS | answer) for each prompt and choice, shape (n_prompts, n_choices).

    This is what HF beam search ranks when decoding is constrained to `choices`: whole sequences, answer
    AND the EOS that closes it (all answers have the same length here, so the length penalty does not
    change the ranking). Its argmax reproduces :func:`pemnb.evaluate.constrained_generate` exactly; the
    one-pass score of the bare answer agrees with it once the model has learned to stop after the answer.
    One forward pass per prompt and choice: the unbatched reference the tests hold
    :func:`pemnb.evaluate.constrained_scores` (batched, one pass per batch) to.
    """
    model.eval()
    device = next(model.parameters()).device
    enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
    out = np.zeros((len(prompts), len(choices)))
    for c, text in enumerate(with_eos(tokenizer, choices)):
        target = tokenizer(text, add_special_tokens=False)["input_ids"]
        for i, p in enumerate(prompts):
            enc = tokenizer(p, return_tensors="pt").to(device)
            a = torch.tensor([target], device=device)
            if enc_dec:
                logits = model(**enc, labels=a).logits[0]
            else:
                ids = torch.cat([enc["input_ids"], a], 1)
                logits = model(input_ids=ids).logits[0, -len(target) - 1:-1]
            logp = torch.log_softmax(logits.float(), -1)
            out[i, c] = float(logp.gather(-1, a[0].unsqueeze(-1)).sum())
    return out


def single_token_answers(tokenizer, choices: Sequence[str]) -> dict[str, list[int]]:
    """{answer: token ids} — score_choices is exact (one pass) when every list has length 1."""
    return {c: tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices}


# ---------------------------------------------------------------------------------------------- data
@dataclass
class TaskData:
    """One task's rows: training part, evaluation part and a sentence saying where they come from."""

    task: str
    train: Any
    eval: Any
    note: str


def load_task(task: str, s: Settings, seed: int, *, root=None) -> TaskData:
    """Training and evaluation rows of `task` at settings `s` (see Settings).

    RTE: train split → training, validation split → evaluation. MNLI: with ``mnli_train_split="train"``
    the hub's train split and validation_matched; otherwise both parts are carved out of
    validation_matched: first the evaluation part, then the training part from the REST (disjoint).
    """
    n_train, n_eval = s.train_rows[task], s.eval_rows[task]
    if task == "rte":
        train = data.subsample(data.load("glue/rte", "train", root=root), n_train, seed)
        evalset = data.subsample(data.load("glue/rte", "validation", root=root), n_eval, seed + 1)
        return TaskData(task, train, evalset, f"RTE train ({len(train)} rows) → validation ({len(evalset)} rows)")
    if task != "mnli":
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if s.mnli_train_split == "train":
        train = data.subsample(data.load("glue/mnli", "train", root=root), n_train, seed)
        evalset = data.subsample(data.load("glue/mnli", "validation_matched", root=root), n_eval, seed + 1)
        return TaskData(task, train, evalset,
                        f"MNLI train ({len(train)} rows) → validation_matched ({len(evalset)} rows)")
    if s.mnli_train_split != "validation_matched":
        raise ValueError(f"mnli_train_split must be 'train' or 'validation_matched', got {s.mnli_train_split!r}")
    pool = data.load("glue/mnli", "validation_matched", root=root)
    if n_eval is None:
        raise ValueError("carving MNLI out of validation_matched needs a finite eval_rows['mnli']")
    evalset, rest = data.split_off(pool, n_eval, seed)
    train = data.subsample(rest, n_train, seed)
    return TaskData(task, train, evalset,
                    f"MNLI has no train split offline: {len(train)} training rows carved out of validation_matched, "
                    f"disjoint from the {len(evalset)} evaluation rows (also validation_matched)")


def prompts_and_labels(task: str, ds, fmt: PromptFormat, tokenizer) -> tuple[list[str], np.ndarray]:
    """Formatted prompts and answer indices (into ANSWERS[task]) of a dataset's rows."""
    prompts = [fmt.text(tokenizer, prompt(task, row)) for row in ds]
    labels = np.asarray([answer_index(task, label) for label in ds["label"]], dtype=int)
    return prompts, labels


def training_examples(bench, task: str, ds, fmt: PromptFormat) -> list[dict]:
    """Tokenised prompt → answer examples (loss on the answer and EOS only) for a DecoderBench."""
    prompts, labels = prompts_and_labels(task, ds, fmt, bench.tokenizer)
    choices = fmt.choices(task)
    return bench.qa_examples(prompts, [choices[i] for i in labels])


# ------------------------------------------------------------------------------------------ evaluate


class EvalSet:
    """One task's evaluation prompts, allowed answers and gold answer indices."""

    def __init__(self, task: str, ds, fmt: PromptFormat, tokenizer):
        self.task, self.fmt = task, fmt
        self.prompts, self.labels = prompts_and_labels(task, ds, fmt, tokenizer)
        self.choices = fmt.choices(task)
        self.fingerprint = fingerprint([self.prompts, self.choices, self.labels.tolist()])

    def __len__(self) -> int:
        return len(self.prompts)


def accuracy(bench, state: Mapping[str, torch.Tensor], evalset: EvalSet, batch_size: int = 16) -> float:
    """Accuracy of constrained answering: the answer constrained beam search would pick (argmax of
    :func:`pemnb.evaluate.constrained_scores`)."""
    bench.use(state)  # no per-batch progress bar: sweeps show one bar over λ instead
    scores = constrained_scores(bench.model, bench.tokenizer, evalset.prompts, evalset.choices, batch_size)
    return float((scores.argmax(1) == evalset.labels).mean())


def parity(bench, state: Mapping[str, torch.Tensor], evalset: EvalSet, n: int, num_beams: int = 5) -> dict:
    """How often one-pass answer scoring and HF constrained beam search (the paper's decoding) pick the
    same answer on the first n rows: the bare answer (:func:`pemnb.evaluate.score_choices`) and the
    answer with its closing EOS (:func:`pemnb.evaluate.constrained_scores`, what :func:`accuracy` uses),
    which must agree exactly."""
    bench.use(state)
    prompts, tok = evalset.prompts[:n], bench.tokenizer
    fast = score_choices(bench.model, tok, prompts, evalset.choices).argmax(1)
    fast_eos = constrained_scores(bench.model, tok, prompts, evalset.choices).argmax(1)
    beam = np.asarray(constrained_generate(bench.model, tok, prompts, evalset.choices, num_beams=num_beams))
    gold = evalset.labels[:n]
    return {"task": evalset.task, "rows": len(prompts), "agreement (answer only)": float((fast == beam).mean()),
            "agreement (answer + EOS)": float((fast_eos == beam).mean()),
            "accuracy (one pass)": float((fast_eos == gold).mean()), "accuracy (beam search)": float((beam == gold).mean())}


class Evaluator:
    """Accuracy of module states on both tasks, cached by (backbone, state, evaluation set)."""

    def __init__(self, bench, evalsets: Mapping[str, EvalSet], batch_size: int = 16, cache: Cache | None = None):
        self.bench, self.evalsets, self.batch_size = bench, dict(evalsets), batch_size
        root = cache.root if cache is not None else bench.cache.root
        self.results = Cache(root, namespace="results",
                             code_modules=TRAINING_CODE + ("pemnb.evaluate", "pemnb.multitask"))

    def __call__(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """{task: accuracy} of the model carrying `state`."""
        fp = state_fingerprint(state)
        out = {}
        for task, es in self.evalsets.items():
            parts = {"what": "multitask-accuracy", "backbone": self.bench.backbone, "kind": self.bench.kind,
                     "state": fp, "eval": es.fingerprint, "n": len(es)}
            out[task] = self.results.result(parts, lambda: accuracy(self.bench, state, es, self.batch_size))
        return out


# ------------------------------------------------------------------------------------------- modules
def make_bench(profile: Profile, kind: str, s: Settings, *, cache: Cache | None = None,
               progress: bool = True):
    """A DecoderBench on the chapter's backbone, with the chapter's LoRA rank and max length."""
    import dataclasses

    from .generative import DecoderBench

    p = dataclasses.replace(profile, max_length=int(s.max_length),
                            micro_batch=s.micro_batch or profile.micro_batch)
    return DecoderBench(p, kind, backbone=s.backbone, cache=cache, lora_r=int(s.lora_r),
                        lora_alpha=int(s.lora_alpha), progress=progress)


def prompt_format(bench, s: Settings, chat: bool | None = None) -> PromptFormat:
    """The chapter's prompt format for this bench's backbone (chat template only on decoder-only models)."""
    chat = s.chat if chat is None else chat
    return PromptFormat(chat=bool(chat) and not bench.encoder_decoder, encoder_decoder=bench.encoder_decoder)


def format_probe(bench, tasks: Mapping[str, TaskData], n: int, batch_size: int = 16) -> list[dict]:
    """Zero-shot accuracy (identity module) of raw prompts vs the chat template on the first n evaluation
    rows of each task, with the share of 'yes' answers (a model that always says yes gets RTE's base rate)."""
    rows = []
    has_template = not bench.encoder_decoder and bool(getattr(bench.tokenizer, "chat_template", None))
    for chat in ((False, True) if has_template else (False,)):
        fmt = PromptFormat(chat=chat, encoder_decoder=bench.encoder_decoder)
        sets = {t: EvalSet(t, d.eval.select(range(min(n, len(d.eval)))), fmt, bench.tokenizer)
                for t, d in tasks.items()}
        for t, es in sets.items():
            bench.use(bench.identity())
            pred = constrained_scores(bench.model, bench.tokenizer, es.prompts, es.choices, batch_size).argmax(1)
            rows.append({"format": "chat template" if chat else "raw prompt", "task": t, "rows": len(es),
                         "accuracy": float((pred == es.labels).mean()),
                         "share 'yes'": float((pred == ANSWERS[t].index("yes")).mean())})
    return rows


def train_task_modules(bench, examples: Mapping[str, Sequence[dict]], hparams: Mapping[str, Mapping]) -> dict:
    """{task: module state}: one module per task, all from the bench's shared initialisation (cached)."""
    out = {}
    for task, ex in examples.items():
        hp = hparams[task][bench.kind]
        out[task] = bench.train(ex, tag=f"multitask-{task}", steps=int(hp["steps"]), lr=float(hp["lr"]),
                                batch_size=int(hp["batch"]))
    return out


def merge_sweep(evaluate: Callable[[Mapping[str, torch.Tensor]], Mapping[str, float]], theta_mnli, theta_rte,
                kind: str, grid: Sequence[float], progress: bool = True) -> list[dict]:
    """Long rows {kind, lam, task, accuracy} of θ = λθ_MNLI + (1−λ)θ_RTE on every task (λ = 1: the MNLI
    module alone, λ = 0: the RTE module alone), through :func:`pemnb.sweep.sweep`."""
    from .sweep import sweep

    wide = sweep(lambda lam: arithmetic.merge(theta_mnli, theta_rte, lam, kind), grid, evaluate,
                 progress=progress, desc=f"{kind} λ sweep")
    return [{"kind": kind, "lam": r["lam"], "task": task, "accuracy": a}
            for r in wide for task, a in r.items() if task != "lam"]


def summary(sweep_rows: Sequence[Mapping], zero_shot: Mapping[str, float] | None = None) -> "pd.DataFrame":
    """Single-task vs merged accuracy on both tasks, per module kind.

    For each kind: the MNLI module (λ = 1), the RTE module (λ = 0), the even merge (λ = 0.5, when on the
    grid) and the merge with the best mean accuracy of the two tasks (λ chosen on the evaluation rows
    themselves, hence optimistic). Columns: MNLI, RTE, mean; index (kind, module).
    """
    import pandas as pd

    df = pd.DataFrame(list(sweep_rows))
    if df.empty:
        raise ValueError("no sweep rows to summarise")
    wide = df.pivot_table(index=["kind", "lam"], columns="task", values="accuracy", sort=False)
    wide["mean"] = wide[[t for t in TASKS if t in wide.columns]].mean(axis=1)
    out = []
    if zero_shot is not None:
        z = dict(zero_shot)
        out.append({"kind": "base", "module": "instruction-tuned base (identity module, zero-shot)", "λ": np.nan,
                    **{t: z[t] for t in TASKS}, "mean": float(np.mean([z[t] for t in TASKS]))})
    for kind in dict.fromkeys(df["kind"]):
        w = wide.loc[kind]
        lams = list(w.index)
        picks = [("MNLI module alone", 1.0), ("RTE module alone", 0.0)]
        if any(abs(x - 0.5) < 1e-9 for x in lams):
            picks.append(("merged, λ = 0.5", 0.5))
        best = float(w["mean"].idxmax())
        picks.append((f"merged, best mean (λ = {best:g}, chosen on eval rows)", best))
        for name, lam in picks:
            lam = min(lams, key=lambda x: abs(x - lam))
            r = w.loc[lam]
            out.append({"kind": kind, "module": name, "λ": lam, **{t: float(r[t]) for t in TASKS},
                        "mean": float(r["mean"])})
    return pd.DataFrame(out).set_index(["kind", "module"])


def best_merge(sweep_rows: Sequence[Mapping], kind: str) -> dict[str, float]:
    """{lam, mnli, rte, mean} of the λ with the best mean accuracy for one kind."""
    import pandas as pd

    df = pd.DataFrame([r for r in sweep_rows if r["kind"] == kind])
    if df.empty:
        raise ValueError(f"no sweep rows for kind {kind!r}")
    wide = df.pivot_table(index="lam", columns="task", values="accuracy")
    wide["mean"] = wide.mean(axis=1)
    lam = float(wide["mean"].idxmax())
    return {"lam": lam, **{k: float(v) for k, v in wide.loc[lam].items()}}


@presentation
def hparam_table(s: Settings) -> "pd.DataFrame":
    """Learning rate / steps / batch per task and kind at these settings (for the provenance)."""
    import pandas as pd

    rows = [{"task": t.upper(), "kind": k, **s.hparams[t][k]} for t in TASKS for k in KINDS]
    return pd.DataFrame(rows).set_index(["task", "kind"])


@presentation
def sweep_figure(sweep: "pd.DataFrame", zero_shot: Mapping[str, float], *, title: str | None = None):
    """The paper's Figure 6: accuracy on each task of θ = λθ_MNLI + (1−λ)θ_RTE against λ, one panel per
    module kind, with the base model's zero-shot accuracy on each task dashed in that task's colour."""
    import pandas as pd

    from . import plots

    df = sweep.assign(task=sweep["task"].str.upper())
    refs = pd.DataFrame([{"task": t.upper(), "label": f"base model, zero-shot {t.upper()}", "value": float(v)}
                         for t, v in zero_shot.items()])
    return plots.sweep(df, "accuracy", hue="task", col="kind", refs=refs, ylabel="accuracy", ncols=3, title=title)

