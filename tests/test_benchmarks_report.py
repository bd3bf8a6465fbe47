"""benchmarks.run: a run writes the page's results file, and a failed check fails the command."""
import copy
import json

import pytest

from benchmarks import run as R


def test_a_run_writes_the_results_page_and_its_numbers(tmp_path):
    page = tmp_path / "results.md"
    out = R.main(["--quick", "--only", "merging", "--page", str(page)])
    text = page.read_text()
    assert "| (6) TIES per λ point, 2 modules" in text and "**all checks passed**" in text
    assert "1-minute load average" in text
    saved = json.loads(page.with_suffix(".json").read_text())
    assert saved["merging"]["rows"]["2"]["equal"] is True
    assert saved["merging"]["rows"]["2"]["ratio"] == pytest.approx(out["merging"]["rows"]["2"]["ratio"])

    bad = copy.deepcopy(out)
    bad["merging"]["rows"]["2"]["equal"] = False
    assert R.failures(bad) == ["(6) prepared TIES differs from per-point TIES for 2 modules"]
    assert "FAILED" in R.report(bad)


def test_failed_checks_are_named():
    out = {"scoring": {"agree_beam_2": 0.5, "agree_beam_5": 1.0},
           "padding": {"agree": {"dynamic": 1.0, "fixed": 0.99}},
           "engine": {"max_abs_logit_diff": {"load_state_dict": 1e-3}, "pair_equals_compose": True}}
    failed = R.failures(out)
    assert any("2-beam" in f for f in failed) and any("fixed padding" in f for f in failed)
    assert any("load_state_dict" in f for f in failed) and len(failed) == 3
