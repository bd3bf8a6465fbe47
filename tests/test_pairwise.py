"""The pairwise evaluation tool: blind order, append-only log, win rates, tie-discounted agreement."""
import csv

import pytest

from pemnb import pairwise as P

INS = [f"instruction {i}" for i in range(40)]
RESP = {"orig": [f"o{i}" for i in range(40)], "detox": [f"d{i}" for i in range(40)]}


def test_pairs_are_blind_seeded_and_map_back():
    pairs = P.make_pairs(INS, RESP, seed=3)
    assert pairs == P.make_pairs(INS, RESP, seed=3)
    assert pairs != P.make_pairs(INS, RESP, seed=4)
    flipped = sum(p.model_A == "detox" for p in pairs)
    assert 8 < flipped < 32  # random order, not always the same side
    for i, p in enumerate(pairs):
        assert {p.model_A, p.model_B} == {"orig", "detox"}
        shown = {p.model_A: p.response_A, p.model_B: p.response_B}
        assert shown == {"orig": f"o{i}", "detox": f"d{i}"}
        assert P.winner_of("A", p.model_A, p.model_B) == p.model_A
        assert P.winner_of("tie", p.model_A, p.model_B) == "tie"
    assert len({p.item for p in pairs}) == len(pairs)
    with pytest.raises(ValueError, match="exactly two"):
        P.make_pairs(INS, {"a": RESP["orig"]}, seed=0)
    with pytest.raises(ValueError, match="responses"):
        P.make_pairs(INS[:3], RESP, seed=0)
    with pytest.raises(ValueError, match="label"):
        P.winner_of("C", "x", "y")


def test_tie_discounted_agreement_is_lima():
    a = ["x", "y", "tie", "x", "tie"]
    b = ["x", "tie", "tie", "y", "x"]
    assert P.tie_discounted(a, b) == pytest.approx((1 + 0.5 + 1 + 0 + 0.5) / 5)
    assert P.tie_discounted(a, a) == 1.0
    with pytest.raises(ValueError):
        P.tie_discounted(["x"], [])
    with pytest.raises(ValueError):
        P.tie_discounted([], [])


def test_log_is_append_only(tmp_path):
    path = tmp_path / "log.csv"
    pairs = P.make_pairs(INS[:4], {k: v[:4] for k, v in RESP.items()}, seed=0)
    log = P.AnnotationLog(path)
    log.append(pairs[0], "A", "alice", human=True)
    log.append(pairs[1], "tie", "alice", human=True)
    again = P.AnnotationLog(path)  # reopening never truncates
    row = again.append(pairs[0], "B", "judge", human=False)
    assert row["annotator"] == "auto:judge" and row["human"] is False
    df = again.read()
    assert len(df) == 3 and list(df.columns) == P.COLUMNS
    assert df["human"].tolist() == [True, True, False]
    assert df.loc[0, "winner"] == pairs[0].model_A and df.loc[2, "winner"] == pairs[0].model_B
    assert again.done("alice") == {pairs[0].item, pairs[1].item}
    with pytest.raises(ValueError, match="human"):
        again.append(pairs[0], "A", "auto:bot", human=True)
    with pytest.raises(ValueError, match="label"):
        again.append(pairs[0], "maybe", "alice", human=True)
    assert len(P.AnnotationLog(path).read()) == 3


def test_foreign_file_is_refused_or_rotated_never_overwritten(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("something,else\n1,2\n")
    with pytest.raises(ValueError, match="refusing"):
        P.AnnotationLog(path)
    assert path.read_text() == "something,else\n1,2\n"
    log = P.AnnotationLog(path, on_mismatch="rotate")
    assert log.rotated is not None and log.rotated.read_text() == "something,else\n1,2\n"
    assert not path.exists()
    pair = P.make_pairs(INS[:1], {k: v[:1] for k, v in RESP.items()}, seed=0)[0]
    log.append(pair, "A", "bob", human=True)
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == P.COLUMNS


def test_agreement_ignores_presentation_order_and_win_rates(tmp_path):
    log = P.AnnotationLog(tmp_path / "log.csv")
    sub = {k: v[:4] for k, v in RESP.items()}
    seen1, seen2 = P.make_pairs(INS[:4], sub, seed=1), P.make_pairs(INS[:4], sub, seed=2)
    assert any(p.model_A != q.model_A for p, q in zip(seen1, seen2))
    want1 = ["detox", "detox", "tie", "orig"]
    want2 = ["detox", "tie", "tie", "detox"]
    for pairs, want, who in ((seen1, want1, "ann1"), (seen2, want2, "ann2")):
        for p, w in zip(pairs, want):
            label = "tie" if w == "tie" else ("A" if p.model_A == w else "B")
            log.append(p, label, who, human=True)
    df = log.read()
    value, n = P.agreement(df, "ann1", "ann2")
    assert n == 4 and value == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    rates = P.win_rates(df)
    assert rates.loc["ann1", "detox"] == 0.5 and rates.loc["ann1", "tie"] == 0.25 and rates.loc["ann1", "n"] == 4
    assert bool(rates.loc["ann1", "human"])
    m = P.agreement_matrix(df)
    assert m.loc["ann1", "ann2"] == pytest.approx(value) and m.loc["ann1", "ann1"] == 1.0
    # a corrected click supersedes the earlier one
    p = seen1[3]
    log.append(p, "A" if p.model_A == "detox" else "B", "ann1", human=True)
    assert P.agreement(log.read(), "ann1", "ann2")[0] == pytest.approx(1.0 - 0.5 / 4)


def test_annotate_automatically_then_resume(tmp_path, monkeypatch):
    monkeypatch.delenv(P.ANNOTATE_ENV, raising=False)
    log = P.AnnotationLog(tmp_path / "log.csv")
    pairs = P.make_pairs(INS[:6], {k: v[:6] for k, v in RESP.items()}, seed=0)
    helpful = {"orig": {i: 5.0 for i in INS[:6]}, "detox": {i: 5.0 + (j % 3) - 1 for j, i in enumerate(INS[:6])}}
    new = P.annotate(pairs, log, "judge-scores", auto=P.prefer_higher(helpful, margin=0.5))
    assert len(new) == 6 and (new["annotator"] == "auto:judge-scores").all() and not new["human"].any()
    want = ["orig", "tie", "detox"] * 2
    assert new["winner"].tolist() == want
    assert len(P.annotate(pairs, log, "judge-scores", auto=P.prefer_higher(helpful))) == 0  # nothing pending
    assert len(log.read()) == 6
    with pytest.raises(ValueError, match="automatic"):
        P.annotate(pairs, log, "someone")
    nan = P.prefer_higher({"orig": {}, "detox": {}})
    assert nan(pairs[0]) == "tie"


def test_annotate_interactively_with_buttons(tmp_path, monkeypatch):
    pytest.importorskip("ipywidgets")
    monkeypatch.setenv(P.ANNOTATE_ENV, "1")
    assert P.interactive_default()
    log = P.AnnotationLog(tmp_path / "log.csv")
    pairs = P.make_pairs(INS[:2], {k: v[:2] for k, v in RESP.items()}, seed=0)
    box = P.annotate(pairs, log, "carol")
    buttons = box.children[1].children
    assert [b.description for b in buttons] == ["A wins", "B wins", "Tie"]
    assert "Response A" in box.children[0].value
    buttons[0].click()
    buttons[2].click()
    df = log.read()
    assert df["label"].tolist() == ["A", "tie"] and df["human"].all() and (df["annotator"] == "carol").all()
    assert all(b.disabled for b in buttons)
    with pytest.raises(ValueError, match="auto"):
        P.annotate(pairs, P.AnnotationLog(tmp_path / "other.csv"), "auto:x", interactive=True)


# --------------------------------------------------------------------- judgements are not cache
@pytest.fixture
def folders(tmp_path, monkeypatch):
    cache, notes = tmp_path / "cache", tmp_path / "annotations"
    monkeypatch.setenv("PEMNB_CACHE_DIR", str(cache))
    monkeypatch.setenv("PEMNB_ANNOTATIONS_DIR", str(notes))
    return cache, notes


def judge_some(path, n=5, annotator="alice"):
    pairs = P.make_pairs(INS[:n], {k: v[:n] for k, v in RESP.items()}, seed=0)
    log = P.AnnotationLog(path)
    for i, p in enumerate(pairs):
        log.append(p, P.LABELS[i % 3], annotator, human=True)
    return log.read()


def test_the_log_lives_outside_the_cache_and_survives_clearing_it(folders):
    import shutil

    from pemnb.paths import cache_root

    cache, notes = folders
    path = P.log_path("05_instruction_detox-smoke")
    assert path.parent == notes and cache.resolve() not in path.resolve().parents
    before = judge_some(path)
    shutil.rmtree(cache_root())  # what a user does to free the gigabytes of full fine-tunes
    after = P.AnnotationLog(P.log_path("05_instruction_detox-smoke")).read()
    assert len(after) == len(before) == 5
    assert after.equals(before)


def test_the_default_folder_is_the_users_data_folder(tmp_path, monkeypatch):
    from pemnb.paths import annotations_dir

    monkeypatch.delenv("PEMNB_ANNOTATIONS_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert annotations_dir() == tmp_path / ".local" / "share" / "pemnb" / "annotations"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert annotations_dir() == tmp_path / "xdg" / "pemnb" / "annotations"


def test_a_log_at_the_old_place_is_moved_out_of_the_cache_with_every_row(folders):
    import shutil

    cache, notes = folders
    old = cache / "annotations" / "05_instruction_detox-small.csv"
    before = judge_some(old, n=7)
    path = P.log_path("05_instruction_detox-small")
    assert path == notes / old.name and not old.exists()
    shutil.rmtree(cache)
    assert P.AnnotationLog(path).read().equals(before)


def test_old_and_new_logs_of_one_tag_are_merged_without_losing_or_doubling_rows(folders):
    cache, notes = folders
    old, new = cache / "annotations" / "t.csv", notes / "t.csv"
    judge_some(old, n=4, annotator="alice")
    with open(old, newline="") as f:
        old_rows = list(csv.reader(f))[1:]
    notes.mkdir(parents=True)
    new.write_text(open(old).read())  # the same rows in both places (an earlier partial copy) ...
    judge_some(old, n=3, annotator="bob")  # ... and new rows only at the old place
    foreign = cache / "annotations" / "other.csv"
    foreign.write_text("a,b\n1,2\n")
    (notes / "other.csv").write_text("x,y\n3,4\n")
    P.log_path("t")
    df = P.AnnotationLog(new).read()
    assert len(df) == 7 and (df["annotator"] == "bob").sum() == 3
    with open(new, newline="") as f:
        assert list(csv.reader(f))[1:5] == old_rows
    assert (notes / "other.legacy0.csv").read_text() == "a,b\n1,2\n"  # another header: kept beside
    assert (notes / "other.csv").read_text() == "x,y\n3,4\n"
    assert not (cache / "annotations" / "t.csv").exists()
