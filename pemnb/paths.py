"""Where pemnb keeps things on disk: the cache root and the local data folder."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PEMNB_CACHE_DIR"
DATA_ENV = "PEMNB_DATA_DIR"


def cache_root() -> Path:
    """$PEMNB_CACHE_DIR, else ~/.cache/pemnb (created on demand)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pemnb").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_dir() -> Path | None:
    """$PEMNB_DATA_DIR as a Path, or None when unset (then data comes from the hub)."""
    d = os.environ.get(DATA_ENV)
    return Path(d).expanduser().resolve() if d else None
