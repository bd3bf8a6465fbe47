"""Domain transfer by analogy: a sentiment classifier moved to a new review domain with
θ = λ·θ_cls(source) ⊕ (1−λ)·(θ_LM(target) ⊖ θ_LM(source))  (Zhang et al., 2023, §4.4 and appendix D).

Classification and language modelling share every trainable weight (there is no head): classifying
is answering "positive"/"negative" after a prompt (scored over those two answers only), language
modelling is predicting the next 128-token chunk of review text from the previous one
(:func:`pemnb.generative.chunk_pairs`). Per module kind four modules are trained — cls and LM on each
of the two domains — and they serve both directions. The composition is
:func:`pemnb.arithmetic.analogy`, used as is.

Splits: the ``small``/``smoke`` review sets ship as one unsplit file of 1000 sentences, so this module
makes its own seeded, disjoint train / dev / test split of each; the ``paper`` profile uses the hub's
train split for training and carves dev and test rows out of its test split. LM modules see only the
text of the training rows (never an evaluation row). λ is picked on the dev rows, reported on the test rows.

Every state is scored by :func:`evaluate_state` (the chapter's one way to evaluate a state), which keeps
each test row's predicted answer beside the accuracies, so the intervals of the tables and the bands of
the figure (:func:`with_intervals`, :func:`gains`) resample those rows without another forward pass. The
chapter's run is :func:`run` (→ :class:`Transfer`); the facts its prose quotes come from :func:`facts`.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import arithmetic, data
from .cache import TRAINING_CODE, Cache
from .generative import DecoderBench, chunk_pairs, pair_examples, prompt_answer_examples
from .profiles import Profile
from .settings import ChapterSettings
from .syntax import presentation
from .train import steps_for_epochs

CHAPTER = "domain_transfer"
# Label index = answer index (0 negative, 1 positive), as in yelp/amazon_polarity and the UCI sentences.
# The leading space makes each answer one natural word-start token for BPE decoders; T5 and WordPiece drop it.
ANSWERS = (" negative", " positive")
KINDS = ("fft", "lora", "ia3")          # table order (the paper's)
RUN_ORDER = ("lora", "ia3", "fft")     # cheap kinds first
PAPER_GRID = (0.84, 0.86, 0.88, 0.9, 0.92, 0.94, 1.0)   # vary_merge_analogy.sh: sets=(84 … 94 100)
ZERO_SHOT = "zero-shot (identity)"
NO_MODULE = "none"  # the kind shown for the zero-shot row: no module at all
METHODS = (ZERO_SHOT, "source cls", "analogy (λ on dev)", "analogy (best λ on test, oracle)",
           "target cls (ceiling)")
RESULT_CODE = TRAINING_CODE + ("pemnb.generative", "pemnb.evaluate", "pemnb.arithmetic", "pemnb.domain_transfer")


def _hp(lr: float, epochs: float) -> dict:
    return {"lr": lr, "epochs": epochs}


def _same(kinds: Mapping[str, dict]) -> dict:
    """Table 8 gives one (lr, epochs) per method, used for the cls and the LM module alike."""
    return {k: {"cls": dict(v), "lm": dict(v)} for k, v in kinds.items()}


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "backbones": ("smoke-llama",),
        "domains": {"yelp": "yelp_sentences", "amazon": "amazon_sentences"},
        "directions": (("yelp", "amazon"), ("amazon", "yelp")),
        "split": "own", "train_rows": 48, "dev_rows": 16, "test_rows": 32,
        "chunk": 16, "max_length": 64, "batch_size": 8, "eval_batch_size": 32,
        "template": "Review: {text}\nSentiment:",
        "kinds": RUN_ORDER,
        "hparams": {b: _same({"fft": _hp(1e-3, 1), "lora": _hp(5e-3, 1), "ia3": _hp(1e-2, 1)})
                    for b in ("smoke-t5", "smoke-llama")},
        "lam_grid": (0.0, 0.5, 0.9, 1.0),
        "lora_r": 4, "lora_alpha": 8,
    },
    "small": {
        # Sized for 2 shared CPU cores (measured: a LoRA/(IA)³ step of 8 prompts ≈ 2 s, of 8 chunk pairs of
        # 2×128 tokens ≈ 9–28 s; FFT steps ≈ 13 s (prompts) and 16 s (pairs); scoring ≈ 0.12 s per prompt).
        # Learning rates are Table 8's T5-small values; epochs and rows are cut to fit 40 minutes.
        "backbones": ("smollm2-135m",),
        "domains": {"yelp": "yelp_sentences", "amazon": "amazon_sentences"},
        "directions": (("yelp", "amazon"), ("amazon", "yelp")),
        "split": "own", "train_rows": 200, "dev_rows": 50, "test_rows": 200,
        "chunk": 128, "max_length": 128, "batch_size": 8, "eval_batch_size": 32,
        "template": "Review: {text}\nSentiment:",
        "kinds": RUN_ORDER,
        "hparams": {"smollm2-135m": {
            "fft": {"cls": _hp(5e-5, 0.5), "lm": _hp(5e-5, 1)},
            "lora": {"cls": _hp(8e-4, 1), "lm": {**_hp(8e-4, 2), "batch": 4}},
            "ia3": {"cls": _hp(2e-3, 1), "lm": {**_hp(2e-3, 2), "batch": 4}},
        }},
        "lam_grid": (0.0, 0.84, 0.92, 1.0),
        "lora_r": 8, "lora_alpha": 16,
    },
    "paper": {
        "backbones": ("t5-base", "t5-small"),
        "domains": {"yelp": "yelp_polarity", "amazon": "amazon_polarity"},
        "directions": (("yelp", "amazon"), ("amazon", "yelp")),
        "split": "hub", "train_rows": None, "dev_rows": 1000, "test_rows": None,
        "chunk": 128, "max_length": 512, "batch_size": 128, "eval_batch_size": 64,
        # The official prompt_run_glue.py feeds the bare review and trains the target word.
        "template": "{text}",
        "kinds": RUN_ORDER,
        # Table 8, domain transfer (T5-base / T5-small), batch 128, LoRA r = 8.
        "hparams": {
            "t5-base": _same({"fft": _hp(5e-5, 1), "lora": _hp(5e-4, 1), "ia3": _hp(1e-3, 1)}),
            "t5-small": _same({"fft": _hp(5e-5, 1), "lora": _hp(8e-4, 3), "ia3": _hp(2e-3, 3)}),
        },
        "lam_grid": (0.0,) + PAPER_GRID,
        "lora_r": 8, "lora_alpha": 8,
        "micro_batch": 16,  # batch 128 in 8 accumulated passes (pemnb.estimates: fits 24 GB)
    },
}


# --------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings(ChapterSettings):
    """Chapter 04's settings (presets above; ``profile.chapter("domain_transfer")`` overrides them)."""

    CHAPTER: ClassVar[str] = CHAPTER
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS
    backbones: tuple[str, ...]
    domains: Mapping[str, str]                    # domain → dataset name
    directions: tuple[tuple[str, str], ...]       # (source, target)
    split: str                                    # "own": a seeded split of one file; "hub": train / test
    train_rows: int | None
    dev_rows: int
    test_rows: int | None
    chunk: int                                    # LM chunk pairs of this many tokens
    max_length: int
    batch_size: int
    eval_batch_size: int
    template: str
    kinds: tuple[str, ...]
    hparams: Mapping[str, Mapping[str, Mapping[str, Any]]]   # backbone → kind → role → {lr, epochs, batch}
    lam_grid: tuple[float, ...]
    lora_r: int
    lora_alpha: int
    micro_batch: int | None = None                # passes of this many examples accumulate to one batch

    def __post_init__(self):
        super().__post_init__()
        for src, tgt in self.directions:
            if src not in self.domains or tgt not in self.domains or src == tgt:
                raise ValueError(f"bad direction {src!r} → {tgt!r}; domains are {sorted(self.domains)}")
        for b in self.backbones:
            for kind in self.kinds:
                if kind not in self.hparams.get(b, {}):
                    raise ValueError(f"no hyperparameters for backbone {b!r}, kind {kind!r}")


def settings(profile: Profile, **overrides: Any) -> Settings:
    """This chapter's settings at `profile` (an unknown profile, field or type raises)."""
    return Settings.for_profile(profile, **overrides)


# --------------------------------------------------------------------------------------------- data
def domain_splits(name: str, s: Settings, seed: int) -> dict[str, Any]:
    """{"train", "dev", "test"} datasets of one review domain, disjoint and fixed by `seed`.

    split="own": the single file is shuffled once and cut into train_rows / dev_rows / test_rows.
    split="hub": train_rows from the train split; dev_rows then test_rows from the shuffled test split.
    """
    n_train, n_dev, n_test = s.train_rows, s.dev_rows, s.test_rows
    if s.split == "own":
        full = data.load(name, "train").shuffle(seed=seed)
        need = n_train + n_dev + (n_test or 0)
        if need > len(full) or n_train <= 0 or n_dev <= 0:
            raise ValueError(f"{name}: cannot cut {n_train}/{n_dev}/{n_test} rows out of {len(full)}")
        n_test = n_test or len(full) - n_train - n_dev
        return {"train": full.select(range(n_train)),
                "dev": full.select(range(n_train, n_train + n_dev)),
                "test": full.select(range(n_train + n_dev, n_train + n_dev + n_test))}
    if s.split == "hub":
        train = data.subsample(data.load(name, "train"), n_train, seed)
        pool = data.subsample(data.load(name, "test"), None if n_test is None else n_dev + n_test, seed + 1)
        return {"train": train, "dev": pool.select(range(n_dev)), "test": pool.select(range(n_dev, len(pool)))}
    raise ValueError(f"unknown split mode {s.split!r}; expected 'own' or 'hub'")


def reviews(ds, name: str) -> tuple[list[str], list[int]]:
    """(texts, labels) of a review dataset, whitespace-stripped (texts) and 0/1 (labels)."""
    spec = data.get_spec(name)
    texts = [" ".join(str(row[f]).strip() for f in spec.text_fields if row[f]).strip() for row in ds]
    return texts, [int(row[spec.label_field]) for row in ds]


def prompts(texts: Iterable[str], template: str) -> list[str]:
    """The classification prompt of each review."""
    return [template.format(text=t) for t in texts]


def cls_examples(tokenizer, texts: Sequence[str], labels: Sequence[int], s: Settings,
                 encoder_decoder: bool) -> list[dict]:
    """Prompt → "positive"/"negative" examples (only the answer scored)."""
    return prompt_answer_examples(tokenizer, prompts(texts, s.template), [ANSWERS[y] for y in labels],
                                  s.max_length, encoder_decoder)


def lm_examples(tokenizer, texts: Sequence[str], chunk: int, encoder_decoder: bool) -> list[dict]:
    """The paper's LM data: the domain's text as one stream cut into `chunk`-token pieces, chunk i → i+1.
    Reviews are joined with a space so that word boundaries survive the concatenation."""
    pairs = chunk_pairs(tokenizer, [" " + t for t in texts], chunk)
    if not pairs:
        raise ValueError(f"too little text for even one pair of {chunk}-token chunks; lower 'chunk'")
    return pair_examples(pairs, encoder_decoder)


# --------------------------------------------------------------------------------------------- modules
def module_name(role: str, domain: str) -> str:
    return f"{role}({domain})"


def make_bench(profile: Profile, backbone: str, kind: str, s: Settings, cache: Cache | None = None,
               progress: bool = True) -> DecoderBench:
    if s.micro_batch:  # passes of this many examples accumulate to one batch
        import dataclasses

        profile = dataclasses.replace(profile, micro_batch=int(s.micro_batch))
    return DecoderBench(profile, kind, backbone=backbone, cache=cache, lora_r=s.lora_r,
                        lora_alpha=s.lora_alpha, progress=progress)


def load_domains(profile: Profile, s: Settings) -> dict[str, dict[str, Any]]:
    """{domain: {"train"/"dev"/"test": dataset}} for every domain of the chapter."""
    return {d: domain_splits(name, s, profile.seed) for d, name in s.domains.items()}


def train_modules(bench: DecoderBench, domains: Mapping[str, Mapping[str, Any]], s: Settings
                  ) -> tuple[dict[str, dict[str, torch.Tensor]], list[dict]]:
    """The four modules of one kind — cls and LM per domain — trained from the shared init (cached).

    Returns (modules by name, one info row per module: examples, steps, lr, epochs)."""
    hp = s.hparams[bench.backbone][bench.kind]
    modules, info = {}, []
    for domain, splits in domains.items():
        texts, labels = reviews(splits["train"], s.domains[domain])
        examples = {"cls": cls_examples(bench.tokenizer, texts, labels, s, bench.encoder_decoder),
                    "LM": lm_examples(bench.tokenizer, texts, s.chunk, bench.encoder_decoder)}
        for role, ex in examples.items():
            h = hp[role.lower()]
            batch = h.get("batch", s.batch_size)  # a role may set its own batch size
            steps = steps_for_epochs(len(ex), h["epochs"], batch)
            name = module_name(role, domain)
            modules[name] = bench.train(ex, tag=f"{CHAPTER}-{role}-{domain}", steps=steps, lr=h["lr"],
                                        batch_size=batch,
                                        extra_key={"chapter": CHAPTER, "template": s.template,
                                                   "chunk": s.chunk if role == "LM" else None})
            tokens = [len(e["input_ids"]) + (len(e["labels"]) if bench.encoder_decoder else 0) for e in ex]
            info.append({"backbone": bench.backbone, "kind": bench.kind, "module": name, "examples": len(ex),
                         "tokens/example": round(float(np.mean(tokens)), 1), "epochs": h["epochs"],
                         "steps": steps, "lr": h["lr"], "batch": batch})
    return modules, info


# --------------------------------------------------------------------------------------------- evaluate
def eval_set(splits: Mapping[str, Any], name: str, template: str) -> dict[str, Any]:
    """Prompts and labels of the dev rows followed by the test rows, with a mask of which is which."""
    dev_t, dev_y = reviews(splits["dev"], name)
    test_t, test_y = reviews(splits["test"], name)
    return {"prompts": prompts(dev_t + test_t, template), "labels": np.array(dev_y + test_y),
            "is_dev": np.array([True] * len(dev_y) + [False] * len(test_y))}


def accuracies(scores: np.ndarray, ev: Mapping[str, Any]) -> dict[str, float]:
    """Test and dev accuracy of argmax answers."""
    right = scores.argmax(1) == ev["labels"]
    return {"accuracy": float(right[~ev["is_dev"]].mean()), "dev_accuracy": float(right[ev["is_dev"]].mean())}


def evaluate_state(bench: DecoderBench, state: Mapping[str, torch.Tensor], ev: Mapping[str, Any],
                   batch_size: int = 16) -> dict[str, Any]:
    """{accuracy, dev_accuracy, n_test, n_dev, predictions} of the bench carrying `state` on a target's
    rows (:func:`eval_set`), answering by constrained decoding (the answer beam search would pick);
    `predictions` is the answer index of each TEST row, in order (their labels: ``ev["labels"][~ev["is_dev"]]``)."""
    scores = bench.choice_scores(state, ev["prompts"], ANSWERS, batch_size=batch_size)
    return {**accuracies(scores, ev), "n_test": int((~ev["is_dev"]).sum()), "n_dev": int(ev["is_dev"].sum()),
            "predictions": [int(x) for x in scores.argmax(1)[~ev["is_dev"]]]}


def transfer_rows(bench: DecoderBench, modules: Mapping[str, Mapping[str, torch.Tensor]],
                  evals: Mapping[str, Mapping[str, Any]], s: Settings, *, zero_shot: bool = True
                  ) -> list[dict]:
    """Accuracy rows of one kind on the target's rows, per direction: cls(target) (the ceiling), the
    analogy θ(λ) = analogy(cls(src), LM(tgt), LM(src), λ) over the λ grid, cls(source), and with
    `zero_shot` the identity module (the backbone alone; the same for every kind).

    cls(source) is the analogy at λ = 1 exactly (checked on the states); it is then read off that
    evaluation instead of being scored twice."""
    from .sweep import sweep

    kind, rows, progress = bench.kind, [], bench.progress

    def score_on(target: str):
        return lambda state: evaluate_state(bench, state, evals[target], s.eval_batch_size)

    bench.progress = False  # one bar per direction's λ sweep, not one per evaluation
    try:
        for src, tgt in s.directions:
            base = {"backbone": bench.backbone, "kind": kind, "direction": f"{src} → {tgt}", "source": src,
                    "target": tgt}
            cls_s, lm_t, lm_s = (modules[module_name("cls", src)], modules[module_name("LM", tgt)],
                                 modules[module_name("LM", src)])
            score = score_on(tgt)
            if zero_shot:
                rows.append({**base, "method": ZERO_SHOT, "lam": None, **score(bench.identity())})
            rows.append({**base, "method": "target cls (ceiling)", "lam": None,
                         **score(modules[module_name("cls", tgt)])})
            grid = [float(x) for x in s.lam_grid]
            exact = 1.0 in grid and arithmetic.max_abs_diff(arithmetic.analogy(cls_s, lm_t, lm_s, 1.0, kind), cls_s) == 0
            if not exact:
                rows.append({**base, "method": "source cls", "lam": None, **score(cls_s)})
            for r in sweep(lambda lam: arithmetic.analogy(cls_s, lm_t, lm_s, lam, kind), grid, score,
                           progress=progress, desc=f"evaluate {kind} {src} → {tgt}"):
                rows.append({**base, "method": "analogy", **r})
                if exact and r["lam"] == 1.0:
                    rows.append({**rows[-1], "method": "source cls", "lam": None})
    finally:
        bench.progress = progress
    return rows


def result_key(profile: Profile, backbone: str, kind: str, s: Settings) -> dict:
    """Everything that decides a kind's result rows (the code version is added by the cache)."""
    return {"what": "domain-transfer-rows", "profile": profile.as_dict(), "backbone": backbone, "kind": kind,
            "settings": {k: v for k, v in s.as_dict().items() if k not in ("backbones", "kinds", "hparams")},
            "zero_shot": kind == s.kinds[0],
            "hparams": s.hparams[backbone][kind]}


def run_kind(profile: Profile, backbone: str, kind: str, s: Settings, *, cache: Cache | None = None,
             progress: bool = True) -> dict[str, Any]:
    """{"rows": accuracy rows (with each test row's prediction), "modules": module info rows, "labels":
    {domain: its test rows' labels}} of one backbone and kind, cached as JSON (a hit neither loads the
    backbone nor the modules)."""
    results = Cache(cache.root if cache else None, namespace="results", code_modules=RESULT_CODE)

    def compute():
        bench = make_bench(profile, backbone, kind, s, cache, progress)
        domains = load_domains(profile, s)
        modules, info = train_modules(bench, domains, s)
        evals = {d: eval_set(sp, s.domains[d], s.template) for d, sp in domains.items()}
        rows = transfer_rows(bench, modules, evals, s, zero_shot=kind == s.kinds[0])
        del bench, modules
        gc.collect()
        labels = {d: [int(y) for y in ev["labels"][~ev["is_dev"]]] for d, ev in evals.items()}
        return {"rows": rows, "modules": info, "labels": labels}

    return results.result(result_key(profile, backbone, kind, s), compute)


@dataclass
class Transfer:
    """What chapter 04 measured (:func:`run`)."""

    rows: pd.DataFrame            # one row per (backbone, direction, kind, method[, λ]), with `predictions`
    modules: pd.DataFrame         # what each module was trained on
    labels: dict[str, list[int]]  # domain → its test rows' labels (each row's predictions align with them)


def run(profile: Profile, s: Settings | None = None, *, cache: Cache | None = None, progress: bool = True) -> Transfer:
    """Accuracy rows and module info for every backbone and kind of the chapter."""
    s = s or settings(profile)
    rows, info, labels = [], [], {}
    for backbone in s.backbones:
        for kind in s.kinds:
            out = run_kind(profile, backbone, kind, s, cache=cache, progress=progress)
            rows += out["rows"]
            info += out["modules"]
            labels.update(out["labels"])  # the same split for every backbone and kind (one seed)
    return Transfer(pd.DataFrame(rows), pd.DataFrame(info), labels)


# --------------------------------------------------------------------------------------------- summarise
def pick_lambda(df: pd.DataFrame, column: str = "dev_accuracy") -> pd.DataFrame:
    """The analogy row with the best `column` per (backbone, direction, kind); ties go to the larger λ
    (the one closer to the plain source classifier)."""
    a = df[df["method"] == "analogy"].sort_values("lam", ascending=False, kind="stable")
    idx = a.groupby(["backbone", "direction", "kind"], sort=False)[column].idxmax()
    return a.loc[idx.values]


@presentation
def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per (backbone, direction, kind, method) with test accuracy and the λ used
    (and the rows' predictions, where `df` has them). The zero-shot row (the backbone alone, the same
    for every kind) gets kind "none"."""
    keys = ["backbone", "direction", "kind"]
    cols = keys + ["method", "accuracy", "lam"] + (["target", "predictions"] if "predictions" in df else [])
    fixed = df[df["method"] != "analogy"][cols].copy()
    fixed.loc[fixed["method"] == ZERO_SHOT, "kind"] = NO_MODULE
    dev = pick_lambda(df, "dev_accuracy").assign(method="analogy (λ on dev)")
    oracle = pick_lambda(df, "accuracy").assign(method="analogy (best λ on test, oracle)")
    out = pd.concat([fixed, dev[cols], oracle[cols]])
    return out.drop_duplicates(subset=keys + ["method"]).reset_index(drop=True)


@presentation
def transfer_table(df: pd.DataFrame, methods: Sequence[str] = METHODS) -> pd.DataFrame:
    """The paper's domain-transfer table: rows (kind, method), columns (backbone, direction), test accuracy.
    The first row is the backbone alone (zero-shot); then per kind source cls / analogy / ceiling."""
    long = summary(df)
    table = long.pivot_table(index=["kind", "method"], columns=["backbone", "direction"], values="accuracy",
                             sort=False)
    kinds = [NO_MODULE] + [k for k in KINDS if k in set(long["kind"])]
    order = [(k, m) for k in kinds for m in methods if (k, m) in table.index]
    return table.loc[order]


def chosen_lambdas(df: pd.DataFrame) -> pd.DataFrame:
    """λ picked on the dev rows, per kind (rows) and (backbone, direction) (columns)."""
    return pick_lambda(df).pivot_table(index="kind", columns=["backbone", "direction"], values="lam", sort=False)


def correct(row: Mapping[str, Any], labels: Mapping[str, Sequence[int]]) -> np.ndarray:
    """1.0 for each test row of the row's target domain the state answered right, else 0.0."""
    y = np.asarray(labels[row["target"]])
    pred = np.asarray(row["predictions"])
    if pred.shape != y.shape:
        raise ValueError(f"{len(pred)} predictions for the {len(y)} test rows of {row['target']!r}")
    return (pred == y).astype(float)


@presentation
def with_intervals(df: pd.DataFrame, labels: Mapping[str, Sequence[int]], *, n_boot: int = 1000,
                   seed: int = 0) -> pd.DataFrame:
    """`df` (rows with per-row `predictions`) with, per row, its difference from the source classifier of
    its (backbone, direction, kind) on the same test rows and that difference's 95% paired bootstrap
    interval (vs_source, vs_source_low, vs_source_high; vs_source_real: the interval excludes 0), and the
    band a figure shades around the row's accuracy: the source classifier's accuracy plus that interval
    (accuracy_low, accuracy_high). The predictions column is dropped."""
    from . import stats

    keys = ["backbone", "direction", "kind"]
    source = {tuple(r[k] for k in keys): r for _, r in df[df["method"] == "source cls"].iterrows()}
    out = []
    for _, r in df.iterrows():
        row = r.drop(labels="predictions").to_dict()
        src = source.get(tuple(r[k] for k in keys))
        if src is not None and r["method"] != ZERO_SHOT:
            d = stats.paired_diff_ci(correct(r, labels), correct(src, labels), n_boot=n_boot, seed=seed)
            row.update(vs_source=d.estimate, vs_source_low=d.low, vs_source_high=d.high, vs_source_real=stats.is_real(d),
                       accuracy_low=src["accuracy"] + d.low, accuracy_high=src["accuracy"] + d.high)
        out.append(row)
    return pd.DataFrame(out)


@presentation
def gains(df: pd.DataFrame, labels: Mapping[str, Sequence[int]] | None = None, *, n_boot: int = 1000) -> pd.DataFrame:
    """Per (backbone, direction, kind): zero-shot, source cls, analogy (λ on dev), ceiling, the gain of
    the analogy over the source classifier, and that gain as a share of the gap to the ceiling. With
    `labels` (and predictions in `df`), the gain's 95% paired bootstrap interval over the target's test
    rows too (gain_low, gain_high; gain_real: the interval excludes 0)."""
    from . import stats

    long = summary(df)
    zero = long[long["method"] == ZERO_SHOT].set_index(["backbone", "direction"])["accuracy"]
    t = long[long["method"] != ZERO_SHOT].pivot_table(index=["backbone", "direction", "kind"], columns="method",
                                                       values="accuracy", sort=False)
    t = t[[m for m in METHODS if m in t.columns]]
    if len(zero):
        t.insert(0, ZERO_SHOT, [zero.get((b, d), np.nan) for b, d, _ in t.index])
    t["gain"] = t["analogy (λ on dev)"] - t["source cls"]
    if labels is not None and "predictions" in long:
        at = long.set_index(["backbone", "direction", "kind", "method"])
        cis = [stats.paired_diff_ci(correct(at.loc[(*key, "analogy (λ on dev)")], labels),
                                    correct(at.loc[(*key, "source cls")], labels), n_boot=n_boot) for key in t.index]
        t["gain_low"], t["gain_high"] = [c.low for c in cis], [c.high for c in cis]
        t["gain_real"] = [stats.is_real(c) for c in cis]
    gap = t["target cls (ceiling)"] - t["source cls"]
    t["share of gap closed"] = (t["gain"] / gap).where(gap.abs() > 1e-12)
    return t


@presentation
def gains_table(df: pd.DataFrame, labels: Mapping[str, Sequence[int]]) -> pd.DataFrame:
    """:func:`gains` for a page: accuracies in %, the gain with its 95% interval in points, the share of
    the gap closed."""
    g = gains(df, labels)
    shown = (g[[c for c in (ZERO_SHOT, *METHODS) if c in g.columns]] * 100).round(1)
    shown["gain [95% CI], points"] = [f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]".replace("-", "−")
                                      for d, lo, hi in zip(g["gain"], g["gain_low"], g["gain_high"])]
    shown["share of gap closed"] = g["share of gap closed"].round(2)
    return shown


# --------------------------------------------------------------------------------------------- facts
@presentation
def facts(result: Transfer, *, lora_delta: Mapping[str, float] | None = None, backbone: str | None = None,
          n_boot: int = 1000) -> dict[str, Any]:
    """Every number and phrase the chapter's prose quotes, for one backbone (default: the first), from
    one result (glue them in a loop). `lora_delta`: the arithmetic cell's {"dw_err", "dw_err_scaled"}.

    Per case (kind, direction): <kind>_domain_transfer_<source>_{src, ana, tgt, gain, gain_low, gain_high};
    counts of cases where the analogy's gain is real (n_helps, n_hurts: the interval excludes 0) and
    the words that follow (:mod:`pemnb.wording`); pooled paired intervals of the gap to the ceiling and
    of λ = 0 against λ = 1 over every case's test rows; the sizes behind the page.
    """
    from . import stats, wording

    df, labels = result.rows, result.labels
    b0 = backbone or str(df["backbone"].iloc[0])
    sub_df = df[df["backbone"] == b0]
    g = gains(sub_df, labels, n_boot=n_boot).loc[b0]
    long = summary(sub_df).set_index(["direction", "kind", "method"])
    n_test = int(sub_df["n_test"].iloc[0])
    out: dict[str, Any] = {"backbone": b0, "n_cases": len(g), "n_test": n_test, "one_row": 1.0 / n_test}
    for direction in dict.fromkeys(sub_df["direction"]):
        src, tgt = (x.strip() for x in direction.split("→"))
        out[f"zero_{src}_{tgt}"] = float(long.loc[(direction, NO_MODULE, ZERO_SHOT), "accuracy"])
    for (direction, kind), r in g.iterrows():
        key = f"{kind}_{CHAPTER}_{direction.split(' ')[0]}"
        for col, name in [("source cls", "src"), ("analogy (λ on dev)", "ana"), ("target cls (ceiling)", "tgt"),
                          ("gain", "gain"), ("gain_low", "gain_low"), ("gain_high", "gain_high")]:
            out[f"{key}_{name}"] = float(r[col])
    real = g["gain_real"].astype(bool)
    n_helps, n_hurts = int((real & (g["gain"] > 0)).sum()), int((real & (g["gain"] < 0)).sum())
    out.update(n_helps=n_helps, n_hurts=n_hurts, n_same=len(g) - n_helps - n_hurts,
               helps_phrase=wording.count_phrase(n_helps, len(g), "case"),
               hurts_phrase=wording.count_phrase(n_hurts, len(g), "case"),
               same_phrase=wording.count_phrase(len(g) - n_helps - n_hurts, len(g), "case"),
               mean_gain=float(g["gain"].mean()),
               mean_gap=float((g["target cls (ceiling)"] - g["source cls"]).mean()))
    best = g["gain"].idxmax()
    out.update(best_case=f"{best[1]} on {best[0]}", best_gain=float(g.loc[best, "gain"]),
               best_gain_low=float(g.loc[best, "gain_low"]), best_gain_high=float(g.loc[best, "gain_high"]))

    def pooled(method_a: str, method_b: str, lam_a=None, lam_b=None):
        """Paired interval of method_a − method_b over every case's test rows together."""
        a, b = [], []
        for direction, kind in g.index:
            rows = sub_df[(sub_df["direction"] == direction) & (sub_df["kind"] == kind)]
            pick = lambda m, lam: rows[(rows["method"] == m) & ((rows["lam"] == lam) if lam is not None else True)].iloc[0]
            a.append(correct(pick(method_a, lam_a), labels))
            b.append(correct(pick(method_b, lam_b), labels))
        return stats.paired_diff_ci(np.concatenate(a), np.concatenate(b), n_boot=n_boot)

    gap = pooled("target cls (ceiling)", "source cls")
    out.update(gap_low=gap.low, gap_high=gap.high,
               gap_verb=wording.change(gap, up="is {amount} above", down="is {amount} below",
                                       same="is not distinguishable from"))
    ana = sub_df[sub_df["method"] == "analogy"]
    if {0.0, 1.0} <= set(ana["lam"]):
        out.update(acc_lam1=float(ana.loc[ana["lam"] == 1.0, "accuracy"].mean()),
                   acc_lam0=float(ana.loc[ana["lam"] == 0.0, "accuracy"].mean()))
        lam0 = pooled("analogy", "analogy", 0.0, 1.0)
        out.update(lam0_diff_low=lam0.low, lam0_diff_high=lam0.high,
                   lam0_verb=wording.change(lam0, up="is higher", down="falls", same="is indistinguishable from it"),
                   lam0_reading=wording.change(
                       lam0, down="That is why the paper searches only λ ≥ 0.84: the LM difference alone carries no "
                                  "sentiment training and can only be a small nudge on top of a classifier.",
                       up="So on these rows the LM difference alone answers better than the classifiers do — a sign "
                          "that the classifiers learned little here.",
                       same="So on these rows the LM difference alone answers as well as the classifiers — a sign "
                            "that the classifiers learned little here, not that the LM difference carries sentiment."))
    info = result.modules
    mods = info[info["backbone"] == b0]
    out["lm_pairs"] = float(mods.loc[mods["module"].str.startswith("LM"), "examples"].mean())
    out["cls_rows"] = float(mods.loc[mods["module"].str.startswith("cls"), "examples"].mean())
    for kind in dict.fromkeys(mods["kind"]):
        k = mods[mods["kind"] == kind]
        out[f"{kind}_cls_steps"] = int(k.loc[k["module"].str.startswith("cls"), "steps"].max())
        out[f"{kind}_lm_steps"] = int(k.loc[k["module"].str.startswith("LM"), "steps"].max())
    if lora_delta is not None:
        err, scaled = float(lora_delta["dw_err"]), float(lora_delta["dw_err_scaled"])
        out.update(dw_err=err, dw_err_scaled=scaled)
        out["dw_reading"] = (
            f"drops to {scaled:.2f} once that factor is accounted for. So part of a LoRA analogy's effect is a "
            "stronger classifier update rather than a domain shift" if scaled < 0.5 * err else
            f"is still {scaled:.2f} once that factor is accounted for, so the rescaling explains little of "
            "how the composed update differs from the exact-delta view")
    return out


@presentation
def sweep_figure(df: pd.DataFrame, backbone: str, *, labels: Mapping[str, Sequence[int]] | None = None,
                 title: str | None = None):
    """Figure 7 of the paper for one backbone: target-domain test accuracy against λ, one panel per
    (direction, kind), with the target classifier (ceiling), the source classifier (λ = 1) and the
    identity (zero-shot) as lines. With `labels` (and predictions in `df`) the shaded band is the 95%
    paired interval of each point's difference from the source classifier, drawn at the source
    classifier's level plus that difference (:func:`with_intervals`): where it reaches the source line,
    the test rows cannot tell that λ from the source classifier. The λ axis is the paper's range
    (0.84–1), where the curves live, whenever the grid covers it."""
    from . import plots

    sub = df[df["backbone"] == backbone]
    if sub.empty:
        raise ValueError(f"no rows for backbone {backbone!r}")
    band = None
    if labels is not None and "predictions" in sub:
        sub, band = with_intervals(sub, labels), ("accuracy_low", "accuracy_high")
    kinds = [k for k in KINDS if k in set(sub["kind"])]
    panel = sub["direction"] + " · " + sub["kind"]
    directions = list(dict.fromkeys(sub["direction"]))
    curve = sub[sub["method"] == "analogy"].assign(panel=panel, curve="analogy θ(λ)")
    in_range = curve[curve["lam"] >= PAPER_GRID[0] - 1e-9]
    zoom = in_range["lam"].nunique() >= 2
    refs = [{"panel": r["panel"], "label": label, "value": r["accuracy"]}
            for method, label in (("target cls (ceiling)", "target cls (ceiling)"), ("source cls", "source cls (λ = 1)"))
            for _, r in sub[sub["method"] == method].assign(panel=panel).iterrows()]
    for d, g in sub[sub["method"] == ZERO_SHOT].groupby("direction", sort=False):  # scored once per direction
        refs += [{"panel": f"{d} · {k}", "label": ZERO_SHOT, "value": float(g["accuracy"].iloc[0])} for k in kinds]
    return plots.sweep(in_range if zoom else curve, "accuracy", hue="curve", col="panel", refs=pd.DataFrame(refs),
                       band=band, ncols=len(kinds), ylabel="target accuracy", xlim=(0.83, 1.005) if zoom else None,
                       # panels row by row: one row per direction, one column per kind (the paper's order)
                       col_order=[f"{d} · {k}" for d in directions for k in kinds],
                       xlabel="λ (1 = the source classifier)",
                       title=title or f"Domain transfer by analogy ({backbone})")
