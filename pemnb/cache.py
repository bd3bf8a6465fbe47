"""A content-addressed cache of trained modules and results.

An entry's key is the SHA-256 of everything that determines it (profile, config, data, seed) plus the
source code of the pemnb modules that compute it, so editing that code invalidates old entries. Entries
are written to a temporary folder and renamed into place (atomic); every read checks the payload's
checksum, and a corrupt entry is reported, deleted and recomputed, never silently used.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from . import __version__
from .modules import load_module, save_module
from .paths import cache_root

# The modules whose code decides what a trained module is.
TRAINING_CODE = ("pemnb.profiles", "pemnb.backbones", "pemnb.modules", "pemnb.data", "pemnb.train")


def code_version(modules: Iterable[str] = TRAINING_CODE) -> str:
    """Hash of the source files of the given pemnb modules (and the package version)."""
    h = hashlib.sha256(__version__.encode())
    for name in sorted(set(modules)):
        mod = importlib.import_module(name)
        h.update(name.encode())
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:16]


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a module state's names and values (float32 bytes), for keys of results computed
    from that state (an evaluation, a set of samples)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _canonical(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        return repr(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot put {type(obj).__name__} into a cache key; use plain values")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Cache:
    """Modules and JSON results on disk under ``<root>/<namespace>/``."""

    def __init__(self, root: str | Path | None = None, namespace: str = "entries",
                 code_modules: Iterable[str] = TRAINING_CODE):
        self.root = Path(root) if root is not None else cache_root()
        self.dir = self.root / namespace
        self.dir.mkdir(parents=True, exist_ok=True)
        self.code_modules = tuple(code_modules)

    def key(self, parts: Mapping[str, Any]) -> str:
        """SHA-256 of the canonical JSON of `parts` plus the code version."""
        blob = json.dumps({"parts": _canonical(parts), "code": code_version(self.code_modules)},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / key

    # ------------------------------------------------------------------------------ low level
    def _read(self, parts: Mapping[str, Any], payload_name: str) -> Path | None:
        key = self.key(parts)
        entry = self.path(key)
        manifest, payload = entry / "manifest.json", entry / payload_name
        if not entry.exists():
            return None
        try:
            meta = json.loads(manifest.read_text())
            ok = meta["sha256"] == _sha256(payload) and meta["parts"] == _canonical(parts)
        except (OSError, ValueError, KeyError):
            ok = False
        if not ok:
            warnings.warn(f"pemnb cache: entry {key[:12]} is corrupt or stale; deleting and recomputing",
                          RuntimeWarning, stacklevel=3)
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return payload

    def _write(self, parts: Mapping[str, Any], payload_name: str, write: Callable[[Path], None]) -> Path:
        key = self.key(parts)
        entry = self.path(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".tmp-"))
        try:
            write(tmp / payload_name)
            (tmp / "manifest.json").write_text(json.dumps(
                {"parts": _canonical(parts), "sha256": _sha256(tmp / payload_name),
                 "code": code_version(self.code_modules), "pemnb": __version__}, indent=1))
            if entry.exists():
                shutil.rmtree(entry)
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return entry / payload_name

    # ------------------------------------------------------------------------------ modules
    def get_module(self, parts: Mapping[str, Any]):
        """(state, kind, meta) or None."""
        payload = self._read(parts, "module.safetensors")
        return load_module(payload) if payload is not None else None

    def put_module(self, parts: Mapping[str, Any], state: Mapping[str, torch.Tensor], kind: str,
                   meta: Mapping | None = None) -> Path:
        return self._write(parts, "module.safetensors", lambda p: save_module(p, state, kind, meta))

    # ------------------------------------------------------------------------------ results
    def get_json(self, parts: Mapping[str, Any]):
        payload = self._read(parts, "result.json")
        return json.loads(payload.read_text()) if payload is not None else None

    def put_json(self, parts: Mapping[str, Any], value: Any) -> Path:
        return self._write(parts, "result.json", lambda p: p.write_text(json.dumps(value)))

    def result(self, parts: Mapping[str, Any], compute: Callable[[], Any]) -> Any:
        """The cached JSON result for `parts`, computing and storing it on a miss."""
        hit = self.get_json(parts)
        if hit is not None:
            return hit
        value = compute()
        self.put_json(parts, value)
        return json.loads(json.dumps(value))  # hits and misses return the same types

    def drop_scratch(self, parts: Mapping[str, Any]) -> None:
        """Delete the work-in-progress folder of `parts` (once its result is cached)."""
        shutil.rmtree(self.root / "scratch" / self.key(parts), ignore_errors=True)

    def scratch(self, parts: Mapping[str, Any]) -> Path:
        """A folder for work in progress on `parts` (e.g. training checkpoints), kept across runs."""
        d = self.root / "scratch" / self.key(parts)
        d.mkdir(parents=True, exist_ok=True)
        return d
