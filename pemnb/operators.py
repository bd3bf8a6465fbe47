"""Chapter 00, the two operators: how sure its comparisons are, and the words its prose uses for them.

Every interval resamples the evaluation rows' per-row predictions the bench already returned
(:meth:`pemnb.classify.ClassifierBench.evaluate`), so none costs a forward pass.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import stats, wording

N_BOOT = 1000
IDENTITY = "identity (no adaptation)"
CROSS_TERM_WORDS = ([(0.02, "negligible"), (0.1, "small"), (0.3, "sizeable")], "large")


def points(diff: float) -> str:
    """A difference of accuracies in percentage points, as prose writes it."""
    return f"{100 * abs(diff):.1f} points"


def state_intervals(rows: Sequence[Mapping[str, Any]], labels) -> pd.DataFrame:
    """Rows (module, kind, accuracy, predictions) with a 95% interval on each accuracy and the paired
    difference from the identity module of the same kind (``accuracy_diff…``, ``accuracy_diff_real``)."""
    frames = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        sub = [r for r in rows if r["kind"] == kind]
        identity = next(r for r in sub if r["module"] == IDENTITY)
        frames.append(stats.interval_columns(sub, labels, name="accuracy", against=identity["predictions"],
                                             n_boot=N_BOOT))
    return pd.concat(frames, ignore_index=True)


def addition_summary(add_rows: Sequence[Mapping[str, Any]], labels) -> pd.DataFrame:
    """Per kind: the untuned merge (λ = 0.5) against the better of the two half modules (λ = 1 or 0),
    with a paired interval; where the sweep's best point lies; and whether it lies strictly inside."""
    out = []
    for kind in dict.fromkeys(r["kind"] for r in add_rows):
        sub = sorted((r for r in add_rows if r["kind"] == kind), key=lambda r: r["lam"])
        ends = [sub[0], sub[-1]]
        better_end = max(ends, key=lambda r: r["accuracy"])
        half = min(sub, key=lambda r: abs(r["lam"] - 0.5))
        best = max(sub, key=lambda r: (r["accuracy"], -abs(r["lam"] - 0.5)))
        ci = stats.paired_diff_ci(half["predictions"], better_end["predictions"], labels,
                                  statistic=stats.accuracy, n_boot=N_BOOT)
        out.append({"kind": kind, "merge at λ=0.5": half["accuracy"], "better half module": better_end["accuracy"],
                    "better half is λ": better_end["lam"], "merge − better half": ci.estimate,
                    "low": ci.low, "high": ci.high, "real": stats.is_real(ci),
                    "best λ": best["lam"], "best accuracy": best["accuracy"],
                    "best inside (0, 1)": 0.0 < best["lam"] < 1.0})
    return pd.DataFrame(out)


def facts(states: pd.DataFrame, addition: pd.DataFrame, cross_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every number and phrase chapter 00's prose quotes."""
    out: dict[str, Any] = {}
    for kind, sub in states.groupby("kind", sort=False):
        by = sub.set_index("module")
        for module, key in (("trained θ", "trained"), ("negated ⊖θ", "negated"),
                            ("ablation (−every parameter)", "ablated"), (IDENTITY, "identity")):
            out[f"{kind}_{key}"] = float(by.loc[module, "accuracy"])
        t = by.loc["trained θ"]
        out[f"{kind}_trained_change"] = wording.change(
            t["accuracy_diff"], (t["accuracy_diff_low"], t["accuracy_diff_high"]), amount=points,
            up="lifts accuracy by {amount}", down="lowers accuracy by {amount}", same="leaves accuracy unchanged")
        n = by.loc["negated ⊖θ"]
        out[f"{kind}_negated_vs_chance"] = wording.versus((n["accuracy_low"], n["accuracy_high"]), 0.5,
                                                          above="stays above", below="falls below",
                                                          near="is indistinguishable from")
    for r in addition.to_dict("records"):
        kind = r["kind"]
        out[f"{kind}_merge_half"] = float(r["merge at λ=0.5"])
        out[f"{kind}_better_half"] = float(r["better half module"])
        out[f"{kind}_merge_best"] = float(r["best accuracy"])
        out[f"{kind}_merge_best_lam"] = float(r["best λ"])
        out[f"{kind}_merge_vs_half"] = wording.change(
            r["merge − better half"], (r["low"], r["high"]), amount=points,
            up="beats the better half module by {amount}", down="falls {amount} below the better half module",
            same="is indistinguishable from the better half module")
        out[f"{kind}_best_inside"] = ("inside the sweep" if r["best inside (0, 1)"]
                                      else "at an end of the sweep (one half module alone)")
    errors = [float(r["relative ΔW error"]) for r in cross_rows]
    out["cross_max"] = max(errors)
    out["cross_grade"] = wording.grade(max(errors), *CROSS_TERM_WORDS)
    return out


def sweep_intervals(rows: Sequence[Mapping[str, Any]], labels) -> pd.DataFrame:
    """Sweep rows (lam, kind, accuracy, predictions) with a 95% interval on every point."""
    frames = [stats.interval_columns([r for r in rows if r["kind"] == kind], labels, name="accuracy", n_boot=N_BOOT)
              for kind in dict.fromkeys(r["kind"] for r in rows)]
    return pd.concat(frames, ignore_index=True)


def against_best_member(rows: Sequence[Mapping[str, Any]], labels, merged: str, members: Sequence[str]) -> dict[str, str]:
    """Per kind, the phrase for a merge (module `merged`) against its best member, from a paired interval."""
    out = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        by = {r["module"]: r for r in rows if r["kind"] == kind}
        best = max(members, key=lambda m: by[m]["accuracy"])
        ci = stats.paired_diff_ci(by[merged]["predictions"], by[best]["predictions"], labels,
                                  statistic=stats.accuracy, n_boot=N_BOOT)
        out[kind] = wording.change(ci, amount=points, up=f"beats its best member ({best}) by {{amount}}",
                                   down=f"falls {{amount}} below its best member ({best})",
                                   same=f"is indistinguishable from its best member ({best})")
    return out
