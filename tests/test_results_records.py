"""Committed run records (results/<profile>/<chapter>.json, written by record.Run.finish) are whole:
every key, flat finite facts, a run of committed code whose commit is in the history."""
import json

import pytest

from pemnb import record

RECORDS = sorted((record.REPO / "results").glob("*/*.json"))


def test_every_committed_record_is_whole():
    problems = {p.relative_to(record.REPO).as_posix(): record.record_problems(json.loads(p.read_text()))
                for p in RECORDS}
    assert not {k: v for k, v in problems.items() if v}, problems


def test_a_record_is_named_by_its_chapter_and_profile():
    for p in RECORDS:
        data = json.loads(p.read_text())
        assert (data["profile"], data["chapter"]) == (p.parent.name, p.stem), p


def _record(tmp_path, **facts):
    run = record.start("00_x", "small")
    return json.loads(run.finish(facts, directory=tmp_path).read_text())


def test_a_fresh_record_passes_and_damaged_ones_fail(tmp_path):
    data = {**_record(tmp_path, acc=0.5), "dirty": False}
    assert record.record_problems(data) == []
    assert record.record_problems({k: v for k, v in data.items() if k != "facts"}) == ["missing keys ['facts']"]
    assert any("finite" in p for p in record.record_problems({**data, "facts": {"acc": float("nan")}}))
    assert any("flat" in p for p in record.record_problems({**data, "facts": {"acc": [1, 2]}}))
    assert any("uncommitted" in p for p in record.record_problems({**data, "dirty": True}))
    assert any("not in this repository" in p for p in record.record_problems({**data, "commit": "f" * 40}))
    assert any("OVERRIDES" in p for p in record.record_problems({**data, "overrides": '{"steps": 2}'}))
    assert any("not a duration" in p for p in record.record_problems({**data, "wall_s": None}))
