"""Progress bars: tqdm's notebook-aware bar, switched off for non-interactive book builds.

A built page keeps a widget's first frame (``0/150``) forever, so the Makefile's builds set
``PEMNB_PROGRESS=0``: pages then show no bar rather than a frozen one. A live notebook or a terminal
gets the usual bar.
"""
from __future__ import annotations

import os

from tqdm.auto import tqdm as _tqdm

PROGRESS_ENV = "PEMNB_PROGRESS"


def enabled() -> bool:
    """False when $PEMNB_PROGRESS is 0/false/off (the book builds), True otherwise."""
    return os.environ.get(PROGRESS_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def tqdm(*args, disable: bool = False, **kwargs):
    """`tqdm.auto.tqdm`, disabled when the caller asks or when progress bars are switched off."""
    return _tqdm(*args, disable=disable or not enabled(), **kwargs)
