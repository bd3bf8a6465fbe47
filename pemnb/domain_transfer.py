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
"""
from __future__ import annotations

import gc
import math
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


def steps_for(n_examples: int, epochs: float, batch_size: int) -> int:
    """Optimisation steps for `epochs` passes over `n_examples` (at least one step)."""
    if n_examples <= 0 or batch_size <= 0 or epochs <= 0:
        raise ValueError(f"need positive sizes, got n={n_examples}, epochs={epochs}, batch={batch_size}")
    return max(1, math.ceil(epochs * n_examples / batch_size))


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
            steps = steps_for(len(ex), h["epochs"], batch)
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
def eval_set(splits: Settings, name: str, template: str) -> dict[str, Any]:
    """Prompts and labels of the dev rows followed by the test rows, with a mask of which is which."""
    dev_t, dev_y = reviews(splits["dev"], name)
    test_t, test_y = reviews(splits["test"], name)
    return {"prompts": prompts(dev_t + test_t, template), "labels": np.array(dev_y + test_y),
            "is_dev": np.array([True] * len(dev_y) + [False] * len(test_y))}


def accuracies(scores: np.ndarray, ev: Mapping[str, Any]) -> dict[str, float]:
    """Test and dev accuracy of argmax answers."""
    right = scores.argmax(1) == ev["labels"]
    return {"accuracy": float(right[~ev["is_dev"]].mean()), "dev_accuracy": float(right[ev["is_dev"]].mean())}


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
        ev = evals[target]

        def score(state) -> dict:
            scores = bench.choice_scores(state, ev["prompts"], ANSWERS, batch_size=s.eval_batch_size)
            return {**accuracies(scores, ev), "n_test": int((~ev["is_dev"]).sum()), "n_dev": int(ev["is_dev"].sum())}
        return score

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
             progress: bool = True) -> dict[str, list[dict]]:
    """{"rows": accuracy rows, "modules": module info rows} of one backbone and kind, cached as JSON
    (a hit neither loads the backbone nor the modules)."""
    results = Cache(cache.root if cache else None, namespace="results", code_modules=RESULT_CODE)

    def compute():
        bench = make_bench(profile, backbone, kind, s, cache, progress)
        domains = load_domains(profile, s)
        modules, info = train_modules(bench, domains, s)
        evals = {d: eval_set(sp, s.domains[d], s.template) for d, sp in domains.items()}
        rows = transfer_rows(bench, modules, evals, s, zero_shot=kind == s.kinds[0])
        del bench, modules
        gc.collect()
        return {"rows": rows, "modules": info}

    return results.result(result_key(profile, backbone, kind, s), compute)


def run(profile: Profile, s: Settings | None = None, *, cache: Cache | None = None,
        progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(accuracy rows, module info) for every backbone and kind of the chapter."""
    s = s or settings(profile)
    rows, info = [], []
    for backbone in s.backbones:
        for kind in s.kinds:
            out = run_kind(profile, backbone, kind, s, cache=cache, progress=progress)
            rows += out["rows"]
            info += out["modules"]
    return pd.DataFrame(rows), pd.DataFrame(info)


# --------------------------------------------------------------------------------------------- summarise
def pick_lambda(df: pd.DataFrame, column: str = "dev_accuracy") -> pd.DataFrame:
    """The analogy row with the best `column` per (backbone, direction, kind); ties go to the larger λ
    (the one closer to the plain source classifier)."""
    a = df[df["method"] == "analogy"].sort_values("lam", ascending=False, kind="stable")
    idx = a.groupby(["backbone", "direction", "kind"], sort=False)[column].idxmax()
    return a.loc[idx.values]


@presentation
def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per (backbone, direction, kind, method) with test accuracy and the λ used.
    The zero-shot row (the backbone alone, the same for every kind) gets kind "none"."""
    keys = ["backbone", "direction", "kind"]
    fixed = df[df["method"] != "analogy"][keys + ["method", "accuracy", "lam"]].copy()
    fixed.loc[fixed["method"] == ZERO_SHOT, "kind"] = NO_MODULE
    dev = pick_lambda(df, "dev_accuracy").assign(method="analogy (λ on dev)")
    oracle = pick_lambda(df, "accuracy").assign(method="analogy (best λ on test, oracle)")
    out = pd.concat([fixed, dev[keys + ["method", "accuracy", "lam"]], oracle[keys + ["method", "accuracy", "lam"]]])
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


@presentation
def gains(df: pd.DataFrame) -> pd.DataFrame:
    """Per (backbone, direction, kind): zero-shot, source cls, analogy (λ on dev), ceiling, the gain of
    the analogy over the source classifier, and that gain as a share of the gap to the ceiling."""
    long = summary(df)
    zero = long[long["method"] == ZERO_SHOT].set_index(["backbone", "direction"])["accuracy"]
    t = long[long["method"] != ZERO_SHOT].pivot_table(index=["backbone", "direction", "kind"], columns="method",
                                                       values="accuracy", sort=False)
    t = t[[m for m in METHODS if m in t.columns]]
    if len(zero):
        t.insert(0, ZERO_SHOT, [zero.get((b, d), np.nan) for b, d, _ in t.index])
    t["gain"] = t["analogy (λ on dev)"] - t["source cls"]
    gap = t["target cls (ceiling)"] - t["source cls"]
    t["share of gap closed"] = (t["gain"] / gap).where(gap.abs() > 1e-12)
    return t


@presentation
def sweep_figure(df: pd.DataFrame, backbone: str, *, title: str | None = None):
    """Figure 7 of the paper for one backbone: target-domain test accuracy against λ, one panel per
    (direction, kind), with the target classifier (ceiling) and the identity (zero-shot) as lines.
    The λ axis is the paper's range (0.84–1), where the curves live, whenever the grid covers it."""
    from . import plots

    sub = df[df["backbone"] == backbone]
    if sub.empty:
        raise ValueError(f"no rows for backbone {backbone!r}")
    kinds = [k for k in KINDS if k in set(sub["kind"])]
    panel = sub["direction"] + " · " + sub["kind"]
    directions = list(dict.fromkeys(sub["direction"]))
    curve = sub[sub["method"] == "analogy"].assign(panel=panel, curve="analogy θ(λ)")
    in_range = curve[curve["lam"] >= PAPER_GRID[0] - 1e-9]
    zoom = in_range["lam"].nunique() >= 2
    ceiling = sub[sub["method"] == "target cls (ceiling)"].assign(panel=panel)
    refs = [{"panel": r["panel"], "label": "target cls (ceiling)", "value": r["accuracy"]}
            for _, r in ceiling.iterrows()]
    for d, g in sub[sub["method"] == ZERO_SHOT].groupby("direction", sort=False):  # scored once per direction
        refs += [{"panel": f"{d} · {k}", "label": ZERO_SHOT, "value": float(g["accuracy"].iloc[0])} for k in kinds]
    return plots.sweep(in_range if zoom else curve, "accuracy", hue="curve", col="panel", refs=pd.DataFrame(refs),
                       ncols=len(kinds), ylabel="target accuracy", xlim=(0.83, 1.005) if zoom else None,
                       # panels row by row: one row per direction, one column per kind (the paper's order)
                       col_order=[f"{d} · {k}" for d in directions for k in kinds],
                       xlabel="λ (1 = the source classifier)",
                       title=title or f"Domain transfer by analogy ({backbone})")

