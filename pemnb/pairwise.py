"""Blind pairwise evaluation (the paper's appendix E, after LIMA): two responses in random order,
"A wins / B wins / tie", an append-only CSV log, win rates, and tie-discounted agreement.

The log is never truncated: rows are only appended, and a file whose header does not match is refused
(or moved aside with ``on_mismatch="rotate"``), never overwritten. Every row records whether a human made
it; automatic annotators (a judge model's scores, a scripted policy) are logged with ``human=False`` and
an ``auto:`` name, so they can never pass for human judgements.
"""
from __future__ import annotations

import csv
import hashlib
import html
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

LABELS = ("A", "B", "tie")
COLUMNS = ["time", "annotator", "human", "item", "model_A", "model_B", "label", "winner"]
ANNOTATE_ENV = "PEMNB_ANNOTATE"


@dataclass(frozen=True)
class Pair:
    """One blind comparison: what the annotator sees (instruction, responses A and B) and the hidden key."""

    item: str
    instruction: str
    response_A: str
    response_B: str
    model_A: str
    model_B: str
    kind: str = ""


def make_pairs(instructions: Sequence[str], responses: Mapping[str, Sequence[str]], seed: int,
               kinds: Sequence[str] | None = None) -> list[Pair]:
    """Pairs for two models' responses to the same instructions, each shown in a random (seeded) order."""
    if len(responses) != 2:
        raise ValueError(f"pairwise evaluation compares exactly two models, got {list(responses)}")
    (m1, r1), (m2, r2) = responses.items()
    if not len(r1) == len(r2) == len(instructions):
        raise ValueError(f"{len(instructions)} instructions but {len(r1)} and {len(r2)} responses")
    flips = np.random.default_rng(seed).random(len(instructions)) < 0.5
    pairs = []
    for i, ins in enumerate(instructions):
        # the item id covers what is judged (instruction and both responses), not the order shown
        key = json.dumps([ins, sorted([(m1, r1[i]), (m2, r2[i])])])
        item = f"{i:04d}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
        a, b = ((m2, r2[i]), (m1, r1[i])) if flips[i] else ((m1, r1[i]), (m2, r2[i]))
        pairs.append(Pair(item, ins, a[1], b[1], a[0], b[0], kinds[i] if kinds is not None else ""))
    return pairs


def winner_of(label: str, model_A: str, model_B: str) -> str:
    """The blind label mapped back to a model name (or 'tie')."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    return {"A": model_A, "B": model_B, "tie": "tie"}[label]


class AnnotationLog:
    """An append-only CSV of pairwise judgements."""

    def __init__(self, path: str | Path, on_mismatch: str = "refuse"):
        if on_mismatch not in ("refuse", "rotate"):
            raise ValueError(f"on_mismatch must be 'refuse' or 'rotate', got {on_mismatch!r}")
        self.path = Path(path)
        self.rotated: Path | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            if header != COLUMNS:
                if on_mismatch == "refuse":
                    raise ValueError(f"{self.path} exists with another header {header[:4]}…; refusing to write "
                                     "into it. Pass another path, or on_mismatch='rotate' to move it aside.")
                self.rotated = self._aside()
                os.rename(self.path, self.rotated)

    def _aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for n in range(1000):
            p = self.path.with_name(f"{self.path.stem}.{stamp}.{n}{self.path.suffix}")
            if not p.exists():
                return p
        raise RuntimeError(f"cannot find a free name to move {self.path} aside")

    def append(self, pair: Pair, label: str, annotator: str, human: bool) -> dict:
        """Record one judgement (opened in append mode, flushed to disk) and return the row."""
        if not annotator:
            raise ValueError("every judgement needs an annotator name")
        if not human and not annotator.startswith("auto:"):
            annotator = f"auto:{annotator}"
        if human and annotator.startswith("auto:"):
            raise ValueError("an 'auto:' annotator cannot be recorded as human")
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "annotator": annotator, "human": bool(human),
               "item": pair.item, "model_A": pair.model_A, "model_B": pair.model_B, "label": label,
               "winner": winner_of(label, pair.model_A, pair.model_B)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="", encoding="utf-8") as f:  # "a": never truncates
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if f.tell() == 0:
                w.writeheader()
            w.writerow(row)
            f.flush()
            os.fsync(f.fileno())
        return row

    def read(self) -> pd.DataFrame:
        """Every judgement so far (empty frame with the columns when there are none)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return pd.DataFrame(columns=COLUMNS)
        df = pd.read_csv(self.path, dtype={"item": str, "label": str}, keep_default_na=False)
        df["human"] = df["human"].astype(str).str.lower() == "true"
        return df

    def done(self, annotator: str) -> set[str]:
        """Items this annotator has already judged (the last judgement per item counts)."""
        df = self.read()
        return set(df.loc[df["annotator"] == annotator, "item"])


def log_path(tag: str) -> Path:
    """Where a chapter keeps its annotation log: ``<annotations dir>/<tag>.csv`` (see
    :func:`pemnb.paths.annotations_dir`: $PEMNB_ANNOTATIONS_DIR, default ~/.local/share/pemnb/annotations).

    Judgements are people's work, so they live outside the cache folder (which a user clears to free
    space). Logs found at the old place, ``<pemnb cache>/annotations/``, are moved here first
    (:func:`migrate_legacy_logs`), so nothing judged before is lost or read from a folder about to go.
    """
    from .paths import annotations_dir

    migrate_legacy_logs()
    return annotations_dir() / f"{tag}.csv"


def migrate_legacy_logs() -> list[Path]:
    """Move every annotation log from ``<pemnb cache>/annotations/`` into the annotations folder and
    return where each went. A log whose name is taken there is merged into it: the rows the new log
    lacks are appended (same header) or the old file is kept beside it under a ``.legacy`` name
    (another header); rows are never dropped."""
    import shutil

    from .paths import annotations_dir, legacy_annotations_dir

    old_dir = legacy_annotations_dir()
    if not old_dir.is_dir():
        return []
    new_dir = annotations_dir()
    if old_dir.resolve() == new_dir.resolve():
        return []
    moved = []
    for old in sorted(old_dir.glob("*.csv")):
        new = new_dir / old.name
        if not new.exists():
            shutil.copy2(old, new.with_name(new.name + ".part"))  # a copy first: the cache may be another disk
            os.replace(new.with_name(new.name + ".part"), new)
        elif _header(old) == _header(new) == COLUMNS:
            with open(new, newline="", encoding="utf-8") as f:
                have = {tuple(r) for r in csv.reader(f)}
            with open(old, newline="", encoding="utf-8") as f:
                rows = [r for r in list(csv.reader(f))[1:] if tuple(r) not in have]
            with open(new, "a", newline="", encoding="utf-8") as f:  # "a": never truncates
                csv.writer(f).writerows(rows)
                f.flush()
                os.fsync(f.fileno())
        else:
            new = next(new_dir / f"{old.stem}.legacy{n}{old.suffix}" for n in range(1000)
                       if not (new_dir / f"{old.stem}.legacy{n}{old.suffix}").exists())
            shutil.copy2(old, new)
        old.unlink()
        moved.append(new)
    return moved


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


def judgements(log: AnnotationLog, pairs: Sequence[Pair]) -> pd.DataFrame:
    """The logged judgements of these pairs (a log may also hold judgements of older responses)."""
    df = log.read()
    return df[df["item"].isin({p.item for p in pairs})].reset_index(drop=True)


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """One judgement per (annotator, item): the last one, so a corrected click supersedes the first."""
    return df.drop_duplicates(["annotator", "item"], keep="last")


def win_rates(df: pd.DataFrame) -> pd.DataFrame:
    """Share of items each annotator gave to each model or called a tie (rows: annotator)."""
    if df.empty:
        raise ValueError("no judgements yet")
    d = latest(df)
    table = pd.crosstab(d["annotator"], d["winner"], normalize="index")
    table["n"] = d.groupby("annotator").size()
    table.insert(0, "human", d.groupby("annotator")["human"].first())
    return table


def tie_discounted(labels1: Sequence[str], labels2: Sequence[str]) -> float:
    """LIMA's tie-discounted accuracy of two annotators on the same items: 1 when they agree, 0.5 when
    exactly one says 'tie', 0 when they pick opposite winners. Labels are winners (model names or 'tie')."""
    if len(labels1) != len(labels2):
        raise ValueError(f"{len(labels1)} vs {len(labels2)} labels")
    if len(labels1) == 0:
        raise ValueError("no common items to compare")
    score = [1.0 if a == b else 0.5 if (a == "tie") != (b == "tie") else 0.0 for a, b in zip(labels1, labels2)]
    return float(np.mean(score))


def agreement(df: pd.DataFrame, annotator1: str, annotator2: str) -> tuple[float, int]:
    """(tie-discounted agreement, number of items both judged) between two annotators, compared on
    winners, so it does not matter whether they saw a pair in the same order."""
    d = latest(df)
    a = d[d["annotator"] == annotator1].set_index("item")["winner"]
    b = d[d["annotator"] == annotator2].set_index("item")["winner"]
    common = a.index.intersection(b.index)
    return tie_discounted(list(a[common]), list(b[common])), len(common)


def agreement_matrix(df: pd.DataFrame) -> pd.DataFrame:
    """Tie-discounted agreement for every pair of annotators in the log."""
    names = list(dict.fromkeys(latest(df)["annotator"]))
    m = pd.DataFrame(np.nan, index=names, columns=names)
    for i in names:
        for j in names:
            try:
                m.loc[i, j] = agreement(df, i, j)[0]
            except ValueError:
                pass
    return m


# --------------------------------------------------------------------------------- annotators
def prefer_higher(values: Mapping[str, Mapping[str, float]], margin: float = 0.0) -> Callable[[Pair], str]:
    """An automatic annotator: the response whose model has the higher value for the instruction wins
    (values[model][instruction]); within `margin`, or where a value is missing/NaN, a tie. Pass negated
    toxicities to prefer the less toxic response."""
    def label(p: Pair) -> str:
        a = values.get(p.model_A, {}).get(p.instruction, np.nan)
        b = values.get(p.model_B, {}).get(p.instruction, np.nan)
        if not (np.isfinite(a) and np.isfinite(b)) or abs(a - b) <= margin:
            return "tie"
        return "A" if a > b else "B"
    return label


def interactive_default() -> bool:
    """Whether to show buttons: only when the reader asked for it (``PEMNB_ANNOTATE=1``), since a book
    build executes the notebook with nobody there to click."""
    return os.environ.get(ANNOTATE_ENV, "").lower() in ("1", "true", "yes")


def annotate(pairs: Sequence[Pair], log: AnnotationLog, annotator: str, *, auto: Callable[[Pair], str] | None = None,
             interactive: bool | None = None):
    """Annotate the pairs this annotator has not judged yet.

    Interactive (``PEMNB_ANNOTATE=1`` or interactive=True, in a live Jupyter kernel): returns an
    ipywidgets box with the instruction, responses A and B and three buttons; every click is appended to
    the log as a HUMAN judgement. Otherwise `auto` labels every pending pair and the rows are logged as
    NOT human (annotator 'auto:…'); returns a DataFrame of the new rows.
    """
    interactive = interactive_default() if interactive is None else interactive
    todo = [p for p in pairs if p.item not in log.done(annotator if interactive else _auto_name(annotator))]
    if interactive:
        return _widget(todo, log, annotator)
    if auto is None:
        raise ValueError(f"not interactive (set {ANNOTATE_ENV}=1 in a live kernel for buttons) and no automatic "
                         "annotator given")
    rows = [log.append(p, auto(p), _auto_name(annotator), human=False) for p in todo]
    return pd.DataFrame(rows, columns=COLUMNS)


def _auto_name(name: str) -> str:
    return name if name.startswith("auto:") else f"auto:{name}"


def _widget(todo: Sequence[Pair], log: AnnotationLog, annotator: str):
    import ipywidgets as w

    if annotator.startswith("auto:"):
        raise ValueError("a human annotator's name cannot start with 'auto:'")
    state = {"i": 0}
    view = w.HTML()
    buttons = [w.Button(description=d, button_style=s) for d, s in
               (("A wins", "info"), ("B wins", "info"), ("Tie", ""))]
    status = w.HTML()

    def show():
        i = state["i"]
        if i >= len(todo):
            view.value = "<b>All pairs annotated.</b> Re-run the next cell to update the win rates."
            for b in buttons:
                b.disabled = True
            status.value = f"{len(todo)} judgements appended to <code>{html.escape(str(log.path))}</code>"
            return
        p = todo[i]
        esc = lambda t: html.escape(t).replace("\n", "<br>")  # noqa: E731
        view.value = (f"<p><b>[{i + 1}/{len(todo)}] Instruction:</b> {esc(p.instruction)}</p>"
                      f"<table style='width:100%'><tr><td style='width:50%;vertical-align:top'><b>Response A</b><br>"
                      f"{esc(p.response_A)}</td><td style='vertical-align:top'><b>Response B</b><br>"
                      f"{esc(p.response_B)}</td></tr></table>")
        status.value = f"annotator <b>{html.escape(annotator)}</b> (human); log: <code>{html.escape(str(log.path))}</code>"

    def click(label):
        def handler(_):
            log.append(todo[state["i"]], label, annotator, human=True)
            state["i"] += 1
            show()
        return handler

    for b, label in zip(buttons, LABELS):
        b.on_click(click(label))
    show()
    return w.VBox([view, w.HBox(buttons), status])
