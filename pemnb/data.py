"""Dataset registry and loading: a local mirror (``$PEMNB_DATA_DIR``, JSONL in the hub's schema) or the hub.

Both paths go through ``datasets.load_dataset`` and return a ``datasets.Dataset`` with the hub's field
names, so a chapter does not care where its data came from. Subsampling is deterministic by seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .paths import DATA_ENV, data_dir, offline


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and how to read it."""

    name: str
    local: str | None                  # folder under $PEMNB_DATA_DIR holding <split>.jsonl
    hub: tuple[str, str | None] | None  # (hub path, config) for datasets.load_dataset
    text_fields: tuple[str, ...] = ()
    label_field: str | None = "label"
    num_labels: int | None = None      # 1 = regression
    note: str = ""
    splits: tuple[str, ...] = field(default=("train", "validation", "test"))


def _glue(task, fields, num_labels, splits=("train", "validation", "test"), note=""):
    return DatasetSpec(f"glue/{task}", f"glue/{task}", ("nyu-mll/glue", task), fields, "label",
                       num_labels, note, splits)


DATASETS: dict[str, DatasetSpec] = {d.name: d for d in [
    _glue("cola", ("sentence",), 2),
    _glue("sst2", ("sentence",), 2),
    _glue("mrpc", ("sentence1", "sentence2"), 2),
    _glue("qqp", ("question1", "question2"), 2),
    _glue("stsb", ("sentence1", "sentence2"), 1),
    _glue("mnli", ("premise", "hypothesis"), 3, ("train", "validation_matched", "validation_mismatched")),
    _glue("qnli", ("question", "sentence"), 2),
    _glue("rte", ("sentence1", "sentence2"), 2),
    DatasetSpec("civil_comments", "civil_comments_toxic", ("google/civil_comments", None), ("text",),
                None, None, "the local mirror holds only the toxic part (toxicity >= 0.8) of the test split"),
    DatasetSpec("wikitext-2-raw", "wikitext-2", ("Salesforce/wikitext", "wikitext-2-raw-v1"), ("text",), None),
    DatasetSpec("wikitext-103-raw", None, ("Salesforce/wikitext", "wikitext-103-raw-v1"), ("text",), None),
    DatasetSpec("yelp_polarity", None, ("fancyzhx/yelp_polarity", None), ("text",), "label", 2),
    DatasetSpec("amazon_polarity", None, ("fancyzhx/amazon_polarity", None), ("content",), "label", 2),
    DatasetSpec("yelp_sentences", "yelp_sentences", None, ("text",), "label", 2,
                "UCI Sentiment Labelled Sentences (Yelp), 1000 rows, one unsplit train file"),
    DatasetSpec("amazon_sentences", "amazon_sentences", None, ("content",), "label", 2,
                "UCI Sentiment Labelled Sentences (Amazon), 1000 rows, one unsplit train file"),
    DatasetSpec("cr", None, ("SetFit/CR", None), ("text",), "label", 2, "Customer Reviews (hub only)"),
    DatasetSpec("alpaca", "alpaca_sample", ("tatsu-lab/alpaca", None), ("instruction", "input"), None, None,
                "the local mirror is a 1000-record sample"),
]}

GLUE_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")


class DataNotFound(FileNotFoundError):
    """A dataset split is neither in the local mirror nor reachable on the hub."""


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name]


def local_folder(spec: DatasetSpec) -> str:
    """The folder under $PEMNB_DATA_DIR that holds a dataset: its shipped folder, or for a dataset that
    is not shipped (the paper's hub-only sets) its name with / as _, so a local mirror can provide it."""
    return spec.local or spec.name.replace("/", "_")


def local_file(name: str, split: str, root: str | Path | None = None) -> Path | None:
    """The local JSONL file of a split, or None when the mirror does not have it."""
    spec = get_spec(name)
    root = Path(root) if root is not None else data_dir()
    if root is None:
        return None
    f = root / local_folder(spec) / f"{split}.jsonl"
    return f if f.exists() else None


def load(name: str, split: str, *, root: str | Path | None = None):
    """A split of a registered dataset as a ``datasets.Dataset``: local mirror first, then the hub.

    Raises DataNotFound naming every place it looked and how to provide the data.
    """
    import datasets

    spec = get_spec(name)
    looked = []
    f = local_file(name, split, root)
    if f is not None:
        return datasets.load_dataset("json", data_files={split: str(f)}, split=split)
    base = Path(root) if root is not None else data_dir()
    if base is None:
        looked.append(f"no local data folder (${DATA_ENV} is unset and the checkout's data/ is absent)")
    elif spec.local is None:
        looked.append(f"{base / local_folder(spec) / (split + '.jsonl')} (missing: this dataset is not shipped)")
    else:
        looked.append(f"{base / spec.local / (split + '.jsonl')} (missing)")
    if spec.hub is None:
        looked.append("the hub: none — this dataset has NO hub copy, so only a local file can provide it")
    elif offline():
        looked.append(f"the hub ({hub_id(spec)}): skipped, offline mode (HF_HUB_OFFLINE / PEMNB_OFFLINE)")
    else:
        try:
            return datasets.load_dataset(spec.hub[0], spec.hub[1], split=split)
        except Exception as e:  # no network, no such split, gated…
            looked.append(f"the hub ({hub_id(spec)}, split={split}): {type(e).__name__}: {e}")
    where = spec.local or name.replace("/", "_")
    how = f"put it as JSON Lines in the hub's schema at $PEMNB_DATA_DIR/{where}/{split}.jsonl"
    if spec.hub is not None:
        how += f", or run with internet access so it loads from the hub ({hub_id(spec)})"
    raise DataNotFound(f"dataset {name!r} split {split!r} not found. Looked in:\n  - " + "\n  - ".join(looked)
                       + f"\nTo provide it: {how}.")


def hub_id(spec: DatasetSpec) -> str:
    """The hub dataset a spec names, e.g. `nyu-mll/glue (config rte)`; "none" when it has no hub copy."""
    if spec.hub is None:
        return "none"
    path, config = spec.hub
    return f"{path} (config {config})" if config else path


def subsample(ds, n: int | None, seed: int):
    """A deterministic random subset of n rows (all rows, shuffled, when n is None or ≥ len)."""
    if n is not None and n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    shuffled = ds.shuffle(seed=seed)
    return shuffled if n is None or n >= len(ds) else shuffled.select(range(n))


def split_off(ds, n_first: int, seed: int):
    """Two disjoint parts (first n_first rows, the rest) of a shuffled dataset, e.g. to carve a
    training part or a λ-selection part out of a validation split."""
    if not 0 < n_first < len(ds):
        raise ValueError(f"cannot split {n_first} rows off a dataset of {len(ds)}")
    shuffled = ds.shuffle(seed=seed)
    return shuffled.select(range(n_first)), shuffled.select(range(n_first, len(ds)))


def tokenize_classification(ds, name: str, tokenizer, max_length: int) -> list[dict]:
    """Rows → {input_ids, attention_mask, labels} for a sequence-classification model (no padding;
    batches are padded dynamically)."""
    spec = get_spec(name)
    fields = spec.text_fields
    cols = [list(ds[f]) for f in fields]
    enc = tokenizer(*cols, truncation=True, max_length=max_length)
    labels = list(ds[spec.label_field])
    is_reg = spec.num_labels == 1
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": float(labels[i]) if is_reg else int(labels[i])} for i in range(len(ds))]
