"""Words that follow the numbers: the qualitative phrases of a chapter's prose, chosen from its results.

A page glues these phrases like numbers (``run.glue("merge_verb", wording.change(ci))``), so the
prose says "lifts" only when the merge lifts, and a difference is only called real when its confidence
interval excludes 0 (:func:`pemnb.stats.is_real`).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from .stats import CI, is_real

_SMALL = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")


def number_word(n: int) -> str:
    """A count as prose writes it: words up to twenty ("zero" for 0), digits above."""
    _check_count(n, "n")
    return "zero" if n == 0 else _SMALL[n] if n < len(_SMALL) else str(n)


def plural(noun: str, k: int, plural_form: str | None = None) -> str:
    """`noun` for one, its plural (given, or noun + "s" / "es") otherwise."""
    if k == 1:
        return noun
    if plural_form:
        return plural_form
    return noun + ("es" if noun.endswith(("s", "x", "z", "ch", "sh")) else "s")


def count_phrase(k: int, n: int, noun: str, plural_form: str | None = None) -> str:
    """How many of `n` things: "no task", "one task of six", "two tasks of six", "both tasks",
    "the one task", "every task"."""
    _check_count(k, "k")
    _check_count(n, "n")
    if k > n:
        raise ValueError(f"count {k} is larger than the total {n}")
    if n == 0:
        raise ValueError("no things to count (n = 0)")
    if k == 0:
        return f"no {noun}"
    if k == n:
        return "the one " + noun if n == 1 else f"both {plural(noun, 2, plural_form)}" if n == 2 else f"every {noun}"
    return f"{number_word(k)} {plural(noun, k, plural_form)} of {number_word(n)}"


def direction(diff: float | CI, ci: CI | tuple[float, float] | None = None) -> str:
    """ "up", "down" or "same": the sign of a difference, "same" unless its interval excludes 0."""
    diff, ci = _diff_and_ci(diff, ci)
    if not is_real(ci):
        return "same"
    return "up" if diff > 0 else "down"


def change(diff: float | CI, ci: CI | tuple[float, float] | None = None, *, up: str = "lifts",
           down: str = "lowers", same: str = "leaves it unchanged", amount: Callable[[float], str] | None = None,
           **fields: str) -> str:
    """The phrase for a difference: `up` or `down` when its interval excludes 0, else `same`.

    `diff`: the difference (a float, with `ci` its interval), or a :class:`~pemnb.stats.CI` of it. The
    phrases may name ``{amount}`` (|diff| written by `amount`, default :func:`pemnb.tables.readable`) and any
    keyword `fields`, e.g. ``change(ci, up="lifts {what} by {amount}", same="leaves {what} unchanged",
    what="accuracy")``.
    """
    d, interval = _diff_and_ci(diff, ci)
    if amount is None:
        from .tables import readable as amount
    phrase = {"up": up, "down": down, "same": same}[direction(d, interval)]
    try:
        return phrase.format(amount=amount(abs(d)), **fields)
    except KeyError as e:
        raise ValueError(f"phrase {phrase!r} names {e} but no such field was given") from None


def versus(value: CI | tuple[float, float], reference: float, *, above: str = "beats",
           below: str = "falls below", near: str = "is indistinguishable from") -> str:
    """The phrase for a value against a fixed reference (chance, a majority-class rate, the base model):
    `above` when its whole interval lies above the reference, `below` when below, else `near`."""
    low, high = (value.low, value.high) if isinstance(value, CI) else value
    if not math.isfinite(reference):
        raise ValueError(f"reference must be finite, got {reference}")
    if low > reference:
        return above
    if high < reference:
        return below
    return near


def grade(value: float, cuts: Sequence[tuple[float, str]], top: str) -> str:
    """The word for a magnitude: the word of the first cut `value` lies below, else `top`. E.g. a
    relative error: ``grade(err, [(0.02, "negligible"), (0.1, "small"), (0.3, "sizeable")], "large")``
    — so a 24% error is never called small because the prose was written for a 2% one."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"value must be finite, got {value}")
    bounds = [c for c, _ in cuts]
    if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
        raise ValueError(f"cuts must be strictly increasing, got {bounds}")
    return next((word for cut, word in cuts if v < cut), top)


def _diff_and_ci(diff, ci) -> tuple[float, CI | tuple[float, float]]:
    if isinstance(diff, CI):
        if ci is not None:
            raise ValueError("give the difference as a CI, or as a number with ci=, not both")
        return diff.estimate, diff
    if ci is None:
        raise ValueError("a difference needs its confidence interval (ci=): without one the book does not "
                         "call it a change")
    d = float(diff)
    if not math.isfinite(d):
        raise ValueError(f"difference must be finite, got {diff}")
    return d, ci


def _check_count(k, name: str) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {k!r}")
