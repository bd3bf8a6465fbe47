"""Sphinx extension: pages from notebooks executed with ``make execute`` are rendered as committed.

- A notebook that carries outputs is left out of execution (myst-nb's execution exclude patterns), so
  ``make book`` renders what ``make execute`` ran; a notebook without outputs is executed as before.
  ``PEMNB_EXECUTE=all`` (``make test``, ``make chapter``, ``make rebuild``) executes every notebook.
- At the top of such a page: the run record from its stamp (``python -m pemnb.record stamp``):
  profile, commit, pemnb source hash, machine, wall time; and, when pemnb's source has changed since
  the run, a notice giving the recorded hash and the current one. A notice, not a failure: the build
  goes on (``tests/test_notebook_stamps.py`` is where stale code cells fail).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from docutils import nodes
from sphinx.util import logging

from pemnb import record

logger = logging.getLogger(__name__)
EXECUTE_ENV = "PEMNB_EXECUTE"
MODES = ("committed", "all")


def execute_mode() -> str:
    """$PEMNB_EXECUTE: "committed" (default: notebooks with outputs are rendered as they are) or "all"."""
    mode = os.environ.get(EXECUTE_ENV, "").strip() or "committed"
    if mode not in MODES:
        raise ValueError(f"${EXECUTE_ENV} must be one of {MODES}, got {mode!r}")
    return mode


def _notebooks(srcdir: Path):
    for root, dirs, files in os.walk(srcdir):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_build"))]  # .venv, .git, build folders
        yield from (Path(root) / f for f in files if f.endswith(".ipynb"))


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def render_executed_as_committed(app, config) -> None:
    if execute_mode() == "all":
        return
    executed = [p.resolve().as_posix() for p in _notebooks(Path(app.srcdir))
                if (nb := _read(p)) is not None and record.has_outputs(nb)]
    if executed:
        config.nb_execution_excludepatterns = [*(config.nb_execution_excludepatterns or []), *executed]
        logger.info(f"pemnb_pages: {len(executed)} notebook(s) with outputs rendered as committed")


def _admonition(kind: str, title: str, *parts) -> nodes.admonition:
    box = nodes.admonition(classes=[kind, "pemnb-run"])
    box += nodes.title(text=title)
    para = nodes.paragraph()
    for part in parts:  # plain text, or ("code", text) for an inline literal
        para += nodes.literal(text=part[1]) if isinstance(part, tuple) else nodes.Text(part)
    box += para
    return box


def add_run_record(app, doctree) -> None:
    docname = app.env.docname
    path = Path(app.env.doc2path(docname))
    if path.suffix != ".ipynb" or execute_mode() == "all":
        return
    nb = _read(path)
    stamp = ((nb or {}).get("metadata") or {}).get(record.STAMP_KEY)
    if not nb or not stamp or not record.has_outputs(nb):
        return
    current = record.pemnb_hash()
    app.env.pemnb_page_hash[docname] = current
    rerun = f"make execute CH={path.stem[:2]}" if path.stem[:2].isdigit() else f"python -m pemnb.record execute {path.name}"
    commit = (stamp.get("commit") or "no commit")[:12] + (" + uncommitted changes" if stamp.get("dirty") else "")
    wall = f", in {record.duration(stamp['wall_s'])}" if stamp.get("wall_s") is not None else ""
    boxes = [_admonition(
        "note", "This page's run",
        f"Executed at profile {stamp.get('profile')} from commit ", ("code", commit), " with pemnb source ",
        ("code", str(stamp.get("pemnb_hash"))), f", on {stamp.get('machine')}{wall}.")]
    if stamp.get("pemnb_hash") != current:
        boxes.append(_admonition(
            "warning", "pemnb has changed since this page was executed",
            "The outputs below were computed by pemnb source ", ("code", str(stamp.get("pemnb_hash"))),
            "; this build's pemnb source is ", ("code", current),
            ". They may differ from what the current code computes. To refresh them: ",
            ("code", rerun), "."))
        logger.info(f"pemnb_pages: {docname} was executed with pemnb {stamp.get('pemnb_hash')}, now {current}")
    section = next(iter(doctree.findall(nodes.section)), None)
    parent, at = (section, 1) if section is not None and section.children \
        and isinstance(section[0], nodes.title) else (doctree, 0)
    for box in reversed(boxes):
        parent.insert(at, box)


def _init_env(app) -> None:
    if not hasattr(app.env, "pemnb_page_hash"):
        app.env.pemnb_page_hash = {}


def stale_pages(app, env, added, changed, removed) -> list[str]:
    """Re-read pages whose notice was decided against another pemnb source than today's."""
    current = record.pemnb_hash()
    return [d for d, h in getattr(env, "pemnb_page_hash", {}).items() if h != current and d not in removed]


def _purge(app, env, docname) -> None:
    getattr(env, "pemnb_page_hash", {}).pop(docname, None)


def _merge(app, env, docnames, other) -> None:
    env.pemnb_page_hash.update({d: h for d, h in getattr(other, "pemnb_page_hash", {}).items() if d in docnames})


def setup(app):
    app.connect("config-inited", render_executed_as_committed)
    app.connect("builder-inited", _init_env)
    app.connect("doctree-read", add_run_record)
    app.connect("env-get-outdated", stale_pages)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
