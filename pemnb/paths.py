"""Where pemnb keeps things on disk: the cache root, the local data folder, and people's annotations
(kept apart from the cache, which a user may clear at any time)."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PEMNB_CACHE_DIR"
DATA_ENV = "PEMNB_DATA_DIR"
ANNOTATIONS_ENV = "PEMNB_ANNOTATIONS_DIR"


def cache_root() -> Path:
    """$PEMNB_CACHE_DIR, else ~/.cache/pemnb (created on demand)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pemnb").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


# The offline data the project ships (see data/README.md), next to the package in a checkout.
SHIPPED_DATA = Path(__file__).resolve().parent.parent / "data"


def data_dir() -> Path | None:
    """$PEMNB_DATA_DIR, else the repository's `data/` folder; None only when neither exists
    (an installed package without its checkout: then data comes from the hub)."""
    d = os.environ.get(DATA_ENV)
    if d:
        return Path(d).expanduser().resolve()
    return SHIPPED_DATA if SHIPPED_DATA.is_dir() else None


def annotations_dir() -> Path:
    """$PEMNB_ANNOTATIONS_DIR, else $XDG_DATA_HOME/pemnb/annotations, else ~/.local/share/pemnb/annotations
    (created on demand). Human judgements are work, not cache: they never live under the cache root."""
    d = os.environ.get(ANNOTATIONS_ENV)
    if not d:
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        d = Path(base) / "pemnb" / "annotations"
    root = Path(d).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def legacy_annotations_dir() -> Path:
    """Where annotation logs lived before they had a folder of their own: ``<cache root>/annotations``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pemnb").expanduser() / "annotations"


def offline() -> bool:
    """True when the caller asked for no network (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE or PEMNB_OFFLINE)."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "PEMNB_OFFLINE"))
