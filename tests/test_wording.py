"""pemnb.wording: the phrase follows the number and its interval."""
import numpy as np
import pytest

from pemnb import stats, wording


def ci(est, low, high):
    return stats.CI(estimate=est, low=low, high=high, level=0.95, n=100, n_boot=1000)


def test_change_follows_the_sign_only_when_the_interval_excludes_zero():
    assert wording.change(ci(0.05, 0.01, 0.09)) == "lifts"
    assert wording.change(ci(-0.05, -0.09, -0.01)) == "lowers"
    assert wording.change(ci(0.05, -0.01, 0.11)) == "leaves it unchanged"
    assert wording.change(0.05, (-0.01, 0.11), same="does not change") == "does not change"
    assert wording.change(-0.2, (-0.3, -0.1), down="falls toward chance") == "falls toward chance"


def test_change_fills_amount_and_fields():
    up = wording.change(ci(0.0234, 0.01, 0.04), up="lifts {what} by {amount}", what="accuracy")
    assert up == "lifts accuracy by 0.0234"
    pts = wording.change(ci(-0.0234, -0.04, -0.01), down="costs {amount} points",
                         amount=lambda d: f"{100 * d:.1f}")
    assert pts == "costs 2.3 points"
    with pytest.raises(ValueError, match="names 'what'"):
        wording.change(ci(0.05, 0.01, 0.09), up="lifts {what}")


def test_a_difference_without_an_interval_is_refused():
    with pytest.raises(ValueError, match="confidence interval"):
        wording.change(0.3)
    with pytest.raises(ValueError, match="not both"):
        wording.change(ci(0.1, 0.05, 0.2), (0.0, 1.0))
    with pytest.raises(ValueError, match="finite"):
        wording.change(float("nan"), (0.1, 0.2))


def test_change_from_a_real_paired_bootstrap():
    rng = np.random.default_rng(0)
    b = rng.random(400) < 0.6
    a = b | (rng.random(400) < 0.3)  # a fixes some of b's errors and breaks none
    assert wording.change(stats.paired_diff_ci(a, b)) == "lifts"
    assert wording.change(stats.paired_diff_ci(b, b)) == "leaves it unchanged"


def test_direction():
    assert wording.direction(ci(0.1, 0.05, 0.2)) == "up"
    assert wording.direction(-0.1, (-0.2, -0.05)) == "down"
    assert wording.direction(0.1, (-0.2, 0.3)) == "same"


def test_count_phrase():
    assert wording.count_phrase(1, 6, "task") == "one task of six"
    assert wording.count_phrase(2, 6, "task") == "two tasks of six"
    assert wording.count_phrase(6, 6, "task") == "every task"
    assert wording.count_phrase(0, 6, "task") == "no task"
    assert wording.count_phrase(2, 2, "kind") == "both kinds"
    assert wording.count_phrase(1, 1, "task") == "the one task"
    assert wording.count_phrase(3, 25, "case") == "three cases of 25"
    assert wording.count_phrase(np.int64(2), 8, "class", ) == "two classes of eight"
    assert wording.count_phrase(2, 5, "query", "queries") == "two queries of five"
    for bad in [(7, 6), (-1, 6), (1.5, 6), (0, 0), (True, 3)]:
        with pytest.raises(ValueError):
            wording.count_phrase(*bad, "task")


def test_number_word_and_plural():
    assert [wording.number_word(n) for n in (0, 1, 8, 20, 21)] == ["zero", "one", "eight", "twenty", "21"]
    assert wording.plural("task", 1) == "task" and wording.plural("task", 0) == "tasks"
    assert wording.plural("box", 2) == "boxes"


def test_versus_a_fixed_reference():
    assert wording.versus(ci(0.7, 0.65, 0.75), 0.5) == "beats"
    assert wording.versus(ci(0.3, 0.25, 0.35), 0.5, below="falls below chance") == "falls below chance"
    assert wording.versus((0.45, 0.55), 0.5) == "is indistinguishable from"
    with pytest.raises(ValueError, match="finite"):
        wording.versus((0.45, 0.55), float("inf"))


def test_grade_names_a_magnitude_from_its_value():
    cuts = [(0.02, "negligible"), (0.1, "small"), (0.3, "sizeable")]
    assert [wording.grade(e, cuts, "large") for e in (0.001, 0.05, 0.24, 0.3, 2.0)] == \
        ["negligible", "small", "sizeable", "large", "large"]
    with pytest.raises(ValueError, match="strictly increasing"):
        wording.grade(0.1, [(0.2, "a"), (0.1, "b")], "c")
    with pytest.raises(ValueError, match="finite"):
        wording.grade(float("nan"), cuts, "large")
