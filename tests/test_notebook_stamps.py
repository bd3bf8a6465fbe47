"""The stale-page guard: a committed notebook that carries outputs must carry the stamp of the run that
made them (python -m pemnb.record execute/stamp), and its code cells must be the ones that ran."""
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from pemnb import record

NOTEBOOKS = sorted((record.REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_outputs_come_from_its_cells(path):
    problems = record.stamp_problems(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name}: " + "; ".join(problems)


def _notebook(tmp_path, executed: bool) -> Path:
    nb = new_notebook(cells=[new_markdown_cell("# A page"), new_code_cell("x = 1 + 1"), new_code_cell("print(x)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if executed:
        nb.cells[1].execution_count, nb.cells[2].execution_count = 1, 2
        nb.cells[2].outputs = [new_output("stream", name="stdout", text="2\n")]
    path = tmp_path / "00_page.ipynb"
    nbformat.write(nb, path)
    return path


def test_a_notebook_without_outputs_passes(tmp_path):
    nb = nbformat.read(_notebook(tmp_path, executed=False), as_version=4)
    assert not record.has_outputs(nb) and record.stamp_problems(nb) == []


def test_outputs_without_a_stamp_fail(tmp_path):
    nb = nbformat.read(_notebook(tmp_path, executed=True), as_version=4)
    assert record.has_outputs(nb)
    assert ["no stamp" in p for p in record.stamp_problems(nb)] == [True]


def test_stamped_notebook_passes_until_a_code_cell_changes(tmp_path):
    path = _notebook(tmp_path, executed=True)
    assert record.main(["stamp", str(path), "--profile", "small"]) == 0
    nb = nbformat.read(path, as_version=4)
    s = nb.metadata["pemnb"]
    assert s["profile"] == "small" and s["pemnb_hash"] == record.pemnb_hash()
    assert s["code_cells"] == record.code_cells_hash(nb) and s["commit"] == record.git_state()[0]
    assert "core" in s["machine"]
    # the stamp is judged against the repository it ran in; this one may have uncommitted changes
    s["dirty"] = False
    assert record.stamp_problems(nb) == []
    nb.cells[0].source = "# A page, reworded"  # prose may change without a re-run
    nb.cells[2].outputs[0].text = "2\n"
    assert record.stamp_problems(nb) == []
    nb.cells[1].source = "x = 1 + 2"  # code may not
    assert any("code cells changed" in p for p in record.stamp_problems(nb))
    nb.cells[1].source = "x = 1 + 1\n"  # a trailing newline is not a change
    assert record.stamp_problems(nb) == []
    nb.cells.append(new_code_cell("y = 3"))  # nor may a new cell be added unexecuted
    assert any("code cells changed" in p for p in record.stamp_problems(nb))


@pytest.mark.parametrize("field, value, message", [
    ("dirty", True, "uncommitted changes"), ("profile", "smoke", "smoke profile"),
    ("commit", "0" * 40, "not in this repository's history"), ("overrides", '{"steps": 2}', "OVERRIDES"),
])
def test_stamps_from_a_run_that_cannot_be_committed_fail(tmp_path, field, value, message):
    path = _notebook(tmp_path, executed=True)
    record.stamp(path, "small")
    nb = nbformat.read(path, as_version=4)
    nb.metadata["pemnb"]["dirty"] = False
    nb.metadata["pemnb"][field] = value
    assert any(message in p for p in record.stamp_problems(nb))


def test_stamping_an_unexecuted_notebook_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has no outputs"):
        record.stamp(_notebook(tmp_path, executed=False))


def test_check_command_reports_and_exits_nonzero(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good, bad = _notebook(tmp_path / "a", executed=False), _notebook(tmp_path / "b", executed=True)
    assert record.main(["check", str(good)]) == 0
    assert record.main(["check", str(good), str(bad)]) == 1
    assert "no stamp" in capsys.readouterr().out


def test_execute_runs_in_place_and_stamps(tmp_path):
    path = _notebook(tmp_path, executed=False)
    s = record.execute(path, "small")
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[2].outputs[0].text == "2\n" and nb.metadata["pemnb"] == s
    assert s["wall_s"] is not None and 0 <= s["wall_s"] < 120
    assert record.code_cells_hash(nb) == s["code_cells"]


def test_a_failing_cell_leaves_the_notebook_unchanged(tmp_path):
    from nbclient.exceptions import CellExecutionError
    path = _notebook(tmp_path, executed=False)
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].source = "raise RuntimeError('boom')"
    nbformat.write(nb, path)
    before = path.read_bytes()
    with pytest.raises(CellExecutionError, match="boom"):
        record.execute(path, "small")
    assert path.read_bytes() == before
    assert (record.REPO / "_build" / "failed" / path.name).is_file()
    (record.REPO / "_build" / "failed" / path.name).unlink()
