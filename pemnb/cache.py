"""A content-addressed cache of trained modules and results.

An entry's key is the SHA-256 of everything that determines it (profile, config, data, seed) plus the
code that computes it (:func:`code_version`: named modules or single methods, without the functions
marked :func:`pemnb.syntax.presentation`), so editing a computation invalidates old entries and
restyling a figure or a table does not. Entries
are written to a temporary folder and renamed into place (atomic); every read checks the payload's
checksum, and a corrupt entry is reported, deleted and recomputed, never silently used.

Faults are survived: temporary folders of writers that were killed are removed when a cache is opened
(a folder's name records its writer's host and process, so a live writer's is never touched), and
writers of one entry racing each other never fail — the one that loses the rename keeps the winner's
entry when it is valid.
"""
from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from . import __version__
from .modules import load_module, save_module
from .paths import cache_root
from .syntax import syntax_of

# The modules whose code decides what a trained module is (a bench adds the method that trains).
TRAINING_CODE = ("pemnb.profiles", "pemnb.backbones", "pemnb.modules", "pemnb.data", "pemnb.train")


def code_version(parts: Iterable[str] = TRAINING_CODE) -> str:
    """Hash of the code that computes an entry (and the package version).

    Each part names a pemnb module (``"pemnb.train"``) or one class or function in it
    (``"pemnb.classify:ClassifierBench.train"``). A module counts without its :func:`~pemnb.syntax.presentation`
    functions, and only its syntax counts: comments, docstrings and layout never change a key.
    """
    h = hashlib.sha256(__version__.encode())
    for part in sorted(set(parts)):
        h.update(part.encode())
        h.update(_code_of(part).encode())
    return h.hexdigest()[:16]


def _code_of(part: str) -> str:
    module, _, qualname = part.partition(":")
    path = Path(importlib.import_module(module).__file__)
    try:
        return syntax_of(path, qualname)
    except ValueError as e:
        raise ValueError(f"{part!r}: {e}") from None


def fingerprint(rows: Iterable[Any]) -> str:
    """SHA-256 (first 20 hex digits) of `rows`, for the keys of what was computed from them.

    Each row (a dataset's dict, a tokenised example, a string, any JSON value) is hashed, in order, as
    ``json.dumps(row, sort_keys=True)``; what JSON cannot write goes in as its values (an array, a
    tensor) or its ``str``. A `datasets.Dataset` iterates its rows. The one fingerprint of rows in pemnb:
    every cache key that names data uses it, so a module trained on the same rows keeps its key.
    A single value is fingerprinted as ``fingerprint([value])``.
    """
    if isinstance(rows, (str, bytes, Mapping)):  # would hash characters or keys, not rows
        raise TypeError(f"fingerprint takes a sequence of rows, got a {type(rows).__name__}; "
                        "wrap a single value in a list")
    h = hashlib.sha256()
    for row in rows:
        row = dict(row) if isinstance(row, Mapping) and not isinstance(row, dict) else row
        h.update(json.dumps(row, sort_keys=True, default=_plain).encode())
    return h.hexdigest()[:20]


def _plain(value: Any) -> Any:
    """A JSON stand-in for a value json cannot write: an array's or tensor's values (its str elides
    them), else its str."""
    return value.tolist() if getattr(value, "ndim", 0) >= 1 and hasattr(value, "tolist") else str(value)


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


# A writer's temporary folder: .tmp-<host>-<pid>-<random>; older pemnb wrote .tmp-<random>.
_TMP_PREFIX = ".tmp-"
# A temporary folder that names no live local process is an orphan; one from another host (a shared
# disk) or of the old unnamed kind is left alone until it is this old.
ORPHAN_AGE_S = 24 * 3600


def _tmp_prefix() -> str:
    host = socket.gethostname().replace("-", "_") or "host"
    return f"{_TMP_PREFIX}{host}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_orphan(tmp: Path, now: float | None = None) -> bool:
    """Whether a writer's temporary folder was left by a writer that is gone (killed mid-write)."""
    parts = tmp.name[len(_TMP_PREFIX):].split("-")
    if len(parts) >= 3 and parts[0] == (socket.gethostname().replace("-", "_") or "host") and parts[1].isdigit():
        return int(parts[1]) != os.getpid() and not _pid_alive(int(parts[1]))
    try:
        age = (now or time.time()) - tmp.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > ORPHAN_AGE_S


def clean_orphans(folder: Path) -> list[Path]:
    """Delete the orphaned temporary folders under `folder`'s shards; returns what was removed."""
    removed = []
    for tmp in folder.glob(f"*/{_TMP_PREFIX}*"):
        if tmp.is_dir() and is_orphan(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


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
        clean_orphans(self.dir)

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
        payload = entry / payload_name
        if not entry.exists():
            return None
        if not self._valid(entry, parts, payload_name):
            # A writer swapping the entry in as we read looks like a damaged entry for an instant
            time.sleep(0.05)
            if not entry.exists():
                return None
            if self._valid(entry, parts, payload_name):
                return payload
            warnings.warn(f"pemnb cache: entry {key[:12]} ({entry}) is corrupt or stale; deleting and recomputing",
                          RuntimeWarning, stacklevel=3)
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return payload

    def _load(self, parts: Mapping[str, Any], payload_name: str, load: Callable[[Path], Any]) -> Any:
        """The loaded payload of a valid entry, or None."""
        for _ in range(3):
            payload = self._read(parts, payload_name)
            if payload is None:
                return None
            try:
                return load(payload)
            except FileNotFoundError:  # a writer swapped the entry out between the check and the load
                continue
        return None

    @staticmethod
    def _valid(entry: Path, parts: Mapping[str, Any], payload_name: str) -> bool:
        """Whether `entry` is complete: its manifest names `parts` and its payload's checksum."""
        try:
            meta = json.loads((entry / "manifest.json").read_text())
            return meta["sha256"] == _sha256(entry / payload_name) and meta["parts"] == _canonical(parts)
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _write(self, parts: Mapping[str, Any], payload_name: str, write: Callable[[Path], None]) -> Path:
        key = self.key(parts)
        entry = self.path(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=_tmp_prefix()))
        aside = tmp.with_name(tmp.name + "-old")
        try:
            write(tmp / payload_name)
            (tmp / "manifest.json").write_text(json.dumps(
                {"parts": _canonical(parts), "sha256": _sha256(tmp / payload_name),
                 "code": code_version(self.code_modules), "pemnb": __version__}, indent=1))
            for _ in range(8):
                if entry.exists():  # an older entry: moved aside (atomic) so the rename below can land
                    try:
                        os.replace(entry, aside)
                    except FileNotFoundError:
                        pass  # another writer moved it first
                    except OSError as e:
                        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                            raise
                    shutil.rmtree(aside, ignore_errors=True)
                try:
                    os.replace(tmp, entry)
                    break
                except OSError as e:  # "Directory not empty": a concurrent writer's entry landed first
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    if self._valid(entry, parts, payload_name):
                        break  # the winner wrote the same key's value; ours is discarded
            else:
                raise RuntimeError(f"pemnb cache: could not put entry {key[:12]} in place after 8 tries "
                                   f"(writers keep replacing {entry})")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(aside, ignore_errors=True)
        return entry / payload_name

    # ------------------------------------------------------------------------------ modules
    def get_module(self, parts: Mapping[str, Any]):
        """(state, kind, meta) or None."""
        return self._load(parts, "module.safetensors", load_module)

    def put_module(self, parts: Mapping[str, Any], state: Mapping[str, torch.Tensor], kind: str,
                   meta: Mapping | None = None) -> Path:
        return self._write(parts, "module.safetensors", lambda p: save_module(p, state, kind, meta))

    # ------------------------------------------------------------------------------ results
    def get_json(self, parts: Mapping[str, Any]):
        return self._load(parts, "result.json", lambda p: json.loads(p.read_text()))

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
