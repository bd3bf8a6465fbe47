"""The book's pemnb_pages extension on a tiny Sphinx project: a notebook carrying outputs is rendered as
committed (not executed), with its run record at the top, and a notice when pemnb's source changed since."""
import io
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from pemnb import record

sys.path.insert(0, str(record.REPO / "book" / "_ext"))
import pemnb_pages  # noqa: E402


def _page(src, name, stamp_hash=None):
    nb = new_notebook(cells=[new_markdown_cell(f"# Page {name}\n\nProse."), new_code_cell("print('executed ' + 'now')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if stamp_hash is not None:
        nb.cells[1].execution_count = 1
        nb.cells[1].outputs = [new_output("stream", name="stdout", text="committed output\n")]
        nb.metadata["pemnb"] = {"code_cells": record.code_cells_hash(nb), "pemnb_hash": stamp_hash,
                                "profile": "small", "commit": "a" * 40, "dirty": False,
                                "machine": "Test CPU, 2 cores", "wall_s": 1503.0}
    nbformat.write(nb, src / f"{name}.ipynb")


CURRENT = "feedfacefeedface"


def _build(tmp_path, monkeypatch, mode=None):
    from sphinx.application import Sphinx
    # a fixed "current" source hash, so edits to pemnb during the test cannot change the answer
    monkeypatch.setattr(record, "pemnb_hash", lambda *a: CURRENT)
    if mode:
        monkeypatch.setenv(pemnb_pages.EXECUTE_ENV, mode)
    else:
        monkeypatch.delenv(pemnb_pages.EXECUTE_ENV, raising=False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "index.md").write_text("# Book\n\n```{toctree}\nfresh\nstale\n```\n")
    _page(src, "fresh", CURRENT)
    _page(src, "stale", "0123456789abcdef")
    # force: every notebook not excluded would be executed, so a committed output proves exclusion
    app = Sphinx(str(src), None, str(tmp_path / "html"), str(tmp_path / "doctrees"), "html",
                 confoverrides={"extensions": ["myst_nb", "pemnb_pages"], "nb_execution_mode": "force",
                                "exclude_patterns": ["_build"]},
                 status=io.StringIO(), warning=io.StringIO(), freshenv=True)
    app.build()
    return {n: (tmp_path / "html" / f"{n}.html").read_text() for n in ("fresh", "stale")}


def test_committed_pages_render_as_they_are_with_their_record(tmp_path, monkeypatch):
    pages = _build(tmp_path, monkeypatch)
    for html in pages.values():
        assert "committed output" in html and "executed now" not in html
        assert "This page&#8217;s run" in html or "This page's run" in html
        assert "25 min 3 s" in html and "aaaaaaaaaaaa" in html and "Test CPU, 2 cores" in html
    assert "pemnb has changed since this page was executed" not in pages["fresh"]
    stale = pages["stale"]
    assert "pemnb has changed since this page was executed" in stale
    assert "0123456789abcdef" in stale and CURRENT in stale
    # the notice sits at the top: before the page's prose
    assert stale.index("pemnb has changed") < stale.index("Prose.")


def test_execute_all_executes_committed_pages_and_shows_no_record(tmp_path, monkeypatch):
    # make test / make chapter / make rebuild: the outputs are this build's, so no stamp describes them
    pages = _build(tmp_path, monkeypatch, mode="all")
    for html in pages.values():
        assert "executed now" in html and "committed output" not in html
        assert "pemnb-run" not in html


def test_bad_execute_mode_is_named(monkeypatch):
    monkeypatch.setenv(pemnb_pages.EXECUTE_ENV, "sometimes")
    with pytest.raises(ValueError, match="PEMNB_EXECUTE"):
        pemnb_pages.execute_mode()
    monkeypatch.setenv(pemnb_pages.EXECUTE_ENV, "all")
    assert pemnb_pages.execute_mode() == "all"
