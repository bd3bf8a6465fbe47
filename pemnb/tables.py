"""Tables: provenance of a result and results in the paper's layouts, DataFrame in, DataFrame out."""
from __future__ import annotations

import platform
from typing import Any, Mapping, Sequence

import math

import pandas as pd

from . import __version__
from .backbones import get_backbone
from .profiles import Profile


def readable(x: float) -> str:
    """A number as a page shows it: 3 significant digits, one decimal from 100 up, and scientific
    notation only where a fixed width would hide the value (e.g. 0.092, 25.7, 1545.3, 2.20e+13)."""
    if not math.isfinite(x):
        return str(x)
    ax = abs(x)
    if ax == 0:
        return "0"
    if ax >= 1e5 or ax < 1e-3:
        return f"{x:.2e}"
    return f"{x:.1f}" if ax >= 100 else f"{x:.3g}"


# The book's table style, set once here (every chapter imports this module): whole cells, never cut
# at pandas' 50 characters, and numbers written for reading rather than as raw floats.
pd.set_option("display.max_colwidth", None)
pd.set_option("display.float_format", readable)
pd.set_option("styler.format.precision", 3)


def provenance(profile: Profile, *, own_settings: bool = False, **extra: Any) -> pd.DataFrame:
    """What produced a page's numbers: profile, models, data sizes, seed, plus chapter extras
    (data sizes, scorer…). Shown at the top of every chapter.

    `own_settings`: the chapter sets its own sizes, steps and rates (and gives them in `extra`), so the
    profile's shared ones, which it does not use, are left out (as :meth:`Profile.describe` does).
    """
    import torch
    import transformers

    shared = [("train size / module", profile.train_size),
              ("eval size", profile.eval_size if profile.eval_size is not None else "full split"),
              ("steps × batch", f"{profile.steps} × {profile.batch_size}"),
              ("learning rates", ", ".join(f"{k} {v:g}" for k, v in profile.lr.items())),
              ("LoRA r / α", f"{profile.lora_r} / {profile.lora_alpha}")]
    rows = [("profile", profile.name),
            ("encoder", f"{profile.encoder} — {get_backbone(profile.encoder).note or get_backbone(profile.encoder).hub_id}"),
            ("decoder", f"{profile.decoder} — {get_backbone(profile.decoder).note or get_backbone(profile.decoder).hub_id}"),
            *([] if own_settings else shared),
            ("seed", profile.seed)]
    rows += [(k.replace("_", " "), v) for k, v in extra.items()]
    rows += [("software", f"pemnb {__version__}, torch {torch.__version__}, transformers "
                          f"{transformers.__version__}, Python {platform.python_version()}"),
             ("device", "cuda" if torch.cuda.is_available() else "cpu")]
    return pd.DataFrame(rows, columns=["setting", "value"]).set_index("setting")


def results(rows: Sequence[Mapping[str, Any]], index: str | Sequence[str], columns: str | Sequence[str],
            values: str, *, average: bool = False, order: Sequence[str] | None = None) -> pd.DataFrame:
    """Pivot rows into a results table (optionally with an 'avg' row); `order` orders the columns."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        raise ValueError("no results to tabulate")
    table = df.pivot_table(index=index, columns=columns, values=values, sort=False)
    if order is not None:
        table = table[[c for c in order if c in table.columns]]
    if average:
        table.loc["avg"] = table.mean(numeric_only=True)
    return table


def percent(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """Scores in [0, 1] shown as percentages, as the paper's tables do."""
    return (table * 100).round(digits)


def reported(rows: Sequence[Sequence[Any]], columns: Sequence[str], source: str) -> pd.DataFrame:
    """A table of numbers REPORTED IN THE PAPER, labelled as such in its caption column."""
    df = pd.DataFrame(list(rows), columns=list(columns))
    df.attrs["source"] = source
    df.columns = pd.MultiIndex.from_product([[f"reported in the paper ({source})"], df.columns])
    return df
