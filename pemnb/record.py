"""The run record of a chapter: what ran (profile, commit, pemnb's source), where, how long, and the
numbers its prose quotes — on the page, in ``results/<profile>/<chapter>.json``, and stamped into the
executed notebook so a stale page is caught.

In a chapter (the chapter name is the notebook's file name without .ipynb)::

    run = record.start("01_distribution_generalization", profile)   # first cell, after load_profile()
    tables.provenance(p, ..., **run.provenance())                  # + commit, pemnb hash, machine rows
    run.glue("lora_avg_merged", value, display=False)              # glue a number AND keep it as a fact
    run.glue_ci("merge_gain", stats.paired_diff_ci(a, b))          # an interval: three facts
    run.finish(); run.header()                                     # last cell: JSON written, record shown

From a shell (``make execute`` does both)::

    python -m pemnb.record execute notebooks/03_unlearning.ipynb    # run in place, fail on error, stamp
    python -m pemnb.record stamp notebooks/03_unlearning.ipynb      # stamp a notebook executed otherwise
    python -m pemnb.record check                                    # stale or unstamped outputs → exit 1

A stamp (``metadata.pemnb`` of the notebook) holds the hash of the code cells' sources, the pemnb source
hash, profile, commit and machine. ``tests/test_notebook_stamps.py`` fails when a notebook with outputs
has no stamp or its code cells changed since; the book's ``pemnb_pages`` extension shows the record at the
top of the page and a notice when pemnb's source has changed since the run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .syntax import syntax_of

# The checkout: pemnb/ and, beside it, notebooks/ and results/.
REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(__file__).resolve().parent
RESULTS_ENV = "PEMNB_RESULTS_DIR"
STAMP_KEY = "pemnb"
# What decides a result (a change here makes a run "on uncommitted changes"); notebooks/ and results/
# are what a run writes, so a run in progress never counts itself as a change.
RESULT_INPUTS = ("pemnb", "data", "requirements.txt", "pyproject.toml")


# ---- what ran -------------------------------------------------------------------------------------

def pemnb_hash(package: Path = PACKAGE) -> str:
    """Hash of every pemnb module's code (16 hex digits). Only syntax counts (:func:`pemnb.syntax.syntax_of`,
    as in :func:`pemnb.cache.code_version`): comments, docstrings and layout leave it unchanged, while any
    change to code — a figure's style included, since a page shows it — changes it."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(package).rglob("*.py") if "__pycache__" not in p.parts)
    if not files:
        raise ValueError(f"no Python files under {package}")
    for path in files:
        h.update(path.relative_to(package).as_posix().encode())
        h.update(b"\0")
        h.update(syntax_of(path, presentation=True).encode())
    return h.hexdigest()[:16]


def git_state(repo: Path = REPO) -> tuple[str | None, bool | None]:
    """(commit of HEAD, whether the files that decide results have uncommitted changes); (None, None)
    outside a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", *RESULT_INPUTS],
                                capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def in_history(commit: str, repo: Path = REPO) -> bool | None:
    """Whether `commit` is a commit of this repository (None outside a git checkout)."""
    try:
        r = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{commit}^{{commit}}"],
                           capture_output=True, timeout=30)
        top = subprocess.run(["git", "-C", str(repo), "rev-parse", "--git-dir"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if top.returncode != 0:
        return None
    return r.returncode == 0


def machine() -> str:
    """The hardware a run used, for a reader: GPU model(s) when CUDA is there, and the CPU with the
    cores this process may use."""
    cpu = _cpu_model()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    out = f"{cpu}, {cores} core{'s' if cores != 1 else ''}"
    try:
        import torch
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            gpus = ", ".join(f"{n} × {names.count(n)}" if names.count(n) > 1 else n for n in dict.fromkeys(names))
            out = f"{gpus}; {out}"
    except Exception:  # a broken CUDA set-up must not stop a record being written
        pass
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return re.sub(r"\s+", " ", line.split(":", 1)[1]).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _overrides() -> str | None:
    """$PEMNB_PROFILE_OVERRIDES as the run saw it (None when unset): a run with overrides is not a run
    of the named profile."""
    from .profiles import OVERRIDES_ENV
    return os.environ.get(OVERRIDES_ENV, "").strip() or None


def results_dir() -> Path:
    """$PEMNB_RESULTS_DIR, else ``results/`` beside the book."""
    return Path(os.environ.get(RESULTS_ENV) or REPO / "results").expanduser()


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float) -> str:
    """A wall time for a reader: "48 s", "25 min 3 s", "2 h 05 min"."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


# ---- a chapter's run ------------------------------------------------------------------------------

class Run:
    """One execution of a chapter. Made by :func:`start`; :meth:`glue` and :meth:`fact` collect the
    numbers the prose quotes; :meth:`finish` writes them with the record."""

    def __init__(self, chapter: str, profile: str, *, commit: str | None, dirty: bool | None, pemnb: str,
                 machine: str, started: str):
        self.chapter, self.profile, self.commit, self.dirty = chapter, profile, commit, dirty
        self.pemnb_hash, self.machine, self.started = pemnb, machine, started
        self.facts: dict[str, Any] = {}
        self.overrides = _overrides()
        self.wall_s: float | None = None
        self.path: Path | None = None
        self._t0 = time.monotonic()

    def fact(self, name: str, value: Any) -> Any:
        """Keep `value` (a finite number, a bool or a string) as the fact `name`; returns it as a plain
        Python value."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a fact needs a non-empty string name, got {name!r}")
        v = _plain(name, value)
        self.facts[name] = v
        return v

    def glue(self, name: str, value: Any, display: bool = False) -> Any:
        """myst-nb's ``glue(name, value)`` that also keeps the value as a fact, so the JSON holds every
        number the prose quotes."""
        from myst_nb import glue
        v = self.fact(name, value)
        glue(name, v, display=display)
        return v

    def glue_ci(self, name: str, ci) -> Any:
        """Glue an interval (a :class:`pemnb.stats.CI`) as three facts: `name`, `name_low`, `name_high`;
        returns the interval."""
        for suffix, v in (("", ci.estimate), ("_low", ci.low), ("_high", ci.high)):
            self.glue(name + suffix, v)
        return ci

    def header(self):
        """The record a page shows: profile, commit, pemnb hash, machine, start, and the wall time once
        :meth:`finish` ran (a DataFrame indexed by setting)."""
        import pandas as pd
        commit = "not a git checkout" if self.commit is None else self.commit[:12] + (
            " + uncommitted changes" if self.dirty else "")
        rows = [("chapter", self.chapter), ("profile", self.profile), ("commit", commit),
                ("pemnb source hash", self.pemnb_hash), ("machine", self.machine),
                ("started (UTC)", self.started.replace("T", " ").rstrip("Z")),
                ("wall time", duration(self.wall_s) if self.wall_s is not None else "running")]
        return pd.DataFrame(rows, columns=["run", "value"]).set_index("run")

    def provenance(self) -> dict[str, str]:
        """The record as extra rows for :func:`pemnb.tables.provenance` (commit, pemnb hash, machine)."""
        h = self.header()["value"]
        return {"commit": h["commit"], "pemnb source hash": h["pemnb source hash"], "machine": h["machine"]}

    def as_dict(self) -> dict[str, Any]:
        return {"chapter": self.chapter, "profile": self.profile, "commit": self.commit, "dirty": self.dirty,
                "pemnb_hash": self.pemnb_hash, "machine": self.machine, "started": self.started,
                "wall_s": self.wall_s, "overrides": self.overrides, "facts": dict(self.facts)}

    def finish(self, facts: Mapping[str, Any] | None = None, *, directory: Path | str | None = None) -> Path:
        """Stop the clock, add `facts` (a flat mapping of numbers/strings) to the glued ones, and write
        ``<results>/<profile>/<chapter>.json`` atomically. Returns its path."""
        for k, v in (facts or {}).items():
            self.fact(k, v)
        self.wall_s = round(time.monotonic() - self._t0, 1)
        out = Path(directory) if directory is not None else results_dir()
        self.path = write_json(out / self.profile / f"{self.chapter}.json", self.as_dict())
        return self.path


def start(chapter: str, profile) -> Run:
    """Start the record of a chapter's run at `profile` (a :class:`pemnb.profiles.Profile` or its name)."""
    if not isinstance(chapter, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", chapter):
        raise ValueError(f"chapter must be a plain name like '01_distribution_generalization', got {chapter!r}")
    name = profile if isinstance(profile, str) else getattr(profile, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"profile must be a Profile or a profile name, got {profile!r}")
    commit, dirty = git_state()
    return Run(chapter, name, commit=commit, dirty=dirty, pemnb=pemnb_hash(), machine=machine(), started=_utc_now())


def load(chapter: str, profile: str = "small", directory: Path | str | None = None) -> dict[str, Any]:
    """A chapter's recorded run (``results/<profile>/<chapter>.json``)."""
    path = Path(directory or results_dir()) / profile / f"{chapter}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no recorded run of {chapter} at {profile}: {path} is missing "
                                f"(execute the chapter: make execute CH={chapter[:2]})")
    return json.loads(path.read_text(encoding="utf-8"))


RECORD_KEYS = ("chapter", "profile", "commit", "dirty", "pemnb_hash", "machine", "started", "wall_s", "facts")


def record_problems(data: Mapping[str, Any], *, repo: Path | None = REPO) -> list[str]:
    """What is wrong with a recorded run as a committed result ([] when nothing): missing keys, facts
    that are not flat finite values, a run on uncommitted code, a commit not in `repo`'s history."""
    missing = [k for k in RECORD_KEYS if k not in data]
    if missing:
        return [f"missing keys {missing}"]
    problems = []
    if not isinstance(data["facts"], Mapping):
        problems.append("facts is not a mapping")
    else:
        for k, v in data["facts"].items():
            try:
                _plain(k, v)
            except (TypeError, ValueError) as e:
                problems.append(str(e))
    if not isinstance(data["wall_s"], (int, float)) or not data["wall_s"] >= 0:
        problems.append(f"wall_s is {data['wall_s']!r}, not a duration")
    if data["dirty"]:
        problems.append("the run used uncommitted changes to pemnb or the data")
    if data.get("overrides"):
        problems.append(f"the run's profile was changed by $PEMNB_PROFILE_OVERRIDES ({data['overrides']})")
    if repo is not None and data["commit"] and in_history(data["commit"], repo) is False:
        problems.append(f"its commit {data['commit'][:12]} is not in this repository's history")
    if repo is not None and not data["commit"] and in_history("HEAD", repo):
        problems.append("it records no commit (run outside a git checkout)")
    return problems


def _plain(name: str, value: Any) -> Any:
    if isinstance(value, np.generic) or (hasattr(value, "item") and getattr(value, "ndim", None) == 0):
        value = value.item()  # numpy scalars, 0-d arrays and 0-d tensors
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"fact {name!r} is {value}: facts are finite numbers")
        return value
    raise TypeError(f"fact {name!r} is a {type(value).__name__}; facts are flat: a finite number, a bool or "
                    f"a string (give one fact per number)")


def write_json(path: Path, obj: Any) -> Path:
    """Write `obj` as JSON via a temporary file and a rename, so an interrupted write never leaves a
    half file (strict JSON: NaN and infinity are refused)."""
    path = Path(path)
    text = json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---- notebook stamps ------------------------------------------------------------------------------

def code_cells_hash(nb: Mapping) -> str:
    """Hash of a notebook's code cells' sources, in order (trailing whitespace aside)."""
    sources = [_source(c).rstrip() for c in nb["cells"] if c.get("cell_type") == "code"]
    return hashlib.sha256(json.dumps(sources, ensure_ascii=False).encode()).hexdigest()[:16]


def _source(cell: Mapping) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def has_outputs(nb: Mapping) -> bool:
    """Whether any code cell carries outputs or an execution count (the notebook was executed)."""
    return any(c.get("outputs") or c.get("execution_count") is not None
               for c in nb["cells"] if c.get("cell_type") == "code")


def executed_wall_s(nb: Mapping) -> float | None:
    """Seconds from the first cell's start to the last cell's end, from the timings nbclient records
    (None when the notebook has none)."""
    starts, ends = [], []
    for c in nb["cells"]:
        t = (c.get("metadata") or {}).get("execution") or {}
        for key, bucket in (("iopub.status.busy", starts), ("iopub.status.idle", ends)):
            if key in t:
                try:
                    bucket.append(dt.datetime.fromisoformat(str(t[key]).replace("Z", "+00:00")))
                except ValueError:
                    pass
    if not starts or not ends:
        return None
    return round((max(ends) - min(starts)).total_seconds(), 1)


def stamp(path: Path | str, profile: str | None = None) -> dict[str, Any]:
    """Record in the notebook's metadata what produced its outputs; returns the stamp. Run right after
    the notebook is executed, with the same $PEMNB_PROFILE (or pass `profile`)."""
    import nbformat
    from .profiles import DEFAULT_PROFILE, PROFILE_ENV
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    if not has_outputs(nb):
        raise ValueError(f"{path} has no outputs: execute it first (python -m pemnb.record execute {path})")
    commit, dirty = git_state()
    record = {"code_cells": code_cells_hash(nb), "pemnb_hash": pemnb_hash(),
              "profile": profile or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE,
              "commit": commit, "dirty": dirty, "machine": machine(), "wall_s": executed_wall_s(nb),
              "overrides": _overrides(), "stamped": _utc_now()}
    nb.metadata[STAMP_KEY] = record
    _write_notebook(nb, path)
    return record


def stamp_problems(nb: Mapping, *, repo: Path | None = REPO) -> list[str]:
    """What is wrong with a notebook's outputs as a committed page ([] when nothing, or when it has no
    outputs at all): outputs without a stamp, code cells changed since the run, a run on uncommitted
    code, a commit not in `repo`'s history, a smoke run."""
    if not has_outputs(nb):
        return []
    s = (nb.get("metadata") or {}).get(STAMP_KEY)
    if not s:
        return ["has outputs but no stamp: execute it with `make execute CH=NN` (or clear its outputs)"]
    problems = []
    if s.get("code_cells") != code_cells_hash(nb):
        problems.append("its code cells changed since the run that produced its outputs: re-execute it "
                        "(`make execute CH=NN`) or clear its outputs")
    if s.get("dirty"):
        problems.append("its outputs come from uncommitted changes to pemnb or the data: commit them, then "
                        "re-execute")
    if s.get("overrides"):
        problems.append(f"its outputs come from a profile changed by $PEMNB_PROFILE_OVERRIDES ({s['overrides']})")
    if s.get("profile") == "smoke":
        problems.append("its outputs come from the smoke profile (a test run); execute it at small")
    if repo is not None and s.get("commit") and in_history(s["commit"], repo) is False:
        problems.append(f"its recorded commit {s['commit'][:12]} is not in this repository's history")
    if repo is not None and not s.get("commit") and in_history("HEAD", repo):
        problems.append("its stamp records no commit (executed outside a git checkout)")
    return problems


def _write_notebook(nb, path: Path) -> None:
    import nbformat
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        nbformat.write(nb, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def execute(path: Path | str, profile: str | None = None) -> dict[str, Any]:
    """Execute a notebook in place (in its own folder, no cell time limit, stopping at the first error),
    then stamp it. On an error the notebook is left as it was and the failed copy goes to
    ``_build/failed/``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from tqdm import tqdm

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop(STAMP_KEY, None)
    n_code = sum(c.cell_type == "code" and bool(c.source.strip()) for c in nb.cells)  # nbclient skips empty cells
    bar = tqdm(total=n_code, desc=path.stem, unit="cell", file=sys.stderr)
    client = NotebookClient(nb, timeout=None, allow_errors=False, record_timing=True,
                            kernel_name=(nb.metadata.get("kernelspec") or {}).get("name", "python3"),
                            resources={"metadata": {"path": str(path.parent)}},
                            on_cell_executed=lambda **_: bar.update(1))
    try:
        client.execute()
    except CellExecutionError:
        failed = REPO / "_build" / "failed" / path.name
        failed.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, failed)
        bar.close()
        print(f"{path.name} failed; {path} is unchanged, the failed run is in {failed}", file=sys.stderr)
        raise
    bar.close()
    _write_notebook(nb, path)
    return stamp(path, profile)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pemnb.record", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in [("execute", "execute notebooks in place, one at a time, and stamp them"),
                        ("stamp", "stamp notebooks that were just executed"),
                        ("check", "report notebooks whose outputs are unstamped or stale (exit 1)")]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("notebooks", nargs="*" if name == "check" else "+", type=Path)
        if name != "check":
            p.add_argument("--profile", help="the profile it ran at (default: $PEMNB_PROFILE, else small)")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.command == "check":
        bad = 0
        for nb_path in args.notebooks or sorted((REPO / "notebooks").glob("*.ipynb")):
            import nbformat
            for problem in stamp_problems(nbformat.read(nb_path, as_version=4)):
                print(f"{nb_path}: {problem}")
                bad += 1
        return 1 if bad else 0
    for nb_path in args.notebooks:
        if not nb_path.is_file():
            parser.error(f"no notebook at {nb_path}")
    for nb_path in args.notebooks:
        try:
            s = (execute if args.command == "execute" else stamp)(nb_path, args.profile)
        except ValueError as e:
            parser.exit(2, f"{parser.prog} {args.command}: {e}\n")
        wall = f", {duration(s['wall_s'])}" if s.get("wall_s") is not None else ""
        print(f"{nb_path}: stamped (profile {s['profile']}, commit {(s['commit'] or 'none')[:12]}, "
              f"pemnb {s['pemnb_hash']}{wall})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
