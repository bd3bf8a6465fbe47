"""Distribution generalization: the label-skewed split, task data, λ selection, the chapter pipeline."""
import numpy as np
import pytest

from pemnb import distribution as D
from pemnb.backbones import torch_threads
from pemnb.cache import Cache
from pemnb.profiles import load_profile


def synthetic_labels():
    # 200 rows: 100 of label 0, 60 of label 1, 40 of label 2, interleaved.
    return np.array([0] * 100 + [1] * 60 + [2] * 40)[np.random.default_rng(5).permutation(200)]


def test_skewed_split_puts_exactly_share_of_the_chosen_label_in_s0():
    y = synthetic_labels()
    s0, s1, label = D.skewed_split(y, seed=3, label=0, share=0.8)
    assert label == 0
    assert len(s0) == len(s1) == 100                                  # equal sizes
    assert not set(s0) & set(s1) and len(set(s0) | set(s1)) == 200     # a partition of all rows
    assert (y[s0] == 0).sum() == 80 and (y[s1] == 0).sum() == 20      # 80% / 20% of label 0
    assert D.label_counts(y[s0], 3)[0] + D.label_counts(y[s0], 3)[1] + D.label_counts(y[s0], 3)[2] == 100


def test_skewed_split_is_seeded_and_drops_one_row_when_n_is_odd():
    y = synthetic_labels()
    a, b = D.skewed_split(y, seed=1, label=2), D.skewed_split(y, seed=1, label=2)
    c = D.skewed_split(y, seed=2, label=2)
    assert all((x == z).all() for x, z in zip(a[:2], b[:2]))
    assert not (a[0] == c[0]).all()
    assert (y[a[0]] == 2).sum() == 32 and (y[a[1]] == 2).sum() == 8
    odd = np.array([0] * 51 + [1] * 50)
    s0, s1, _ = D.skewed_split(odd, seed=0, label=1)
    assert len(s0) == len(s1) == 50 and not set(s0) & set(s1)
    assert (odd[s0] == 1).sum() == 40 and (odd[s1] == 1).sum() == 10


def test_skewed_split_refuses_a_label_too_frequent_and_random_pick_avoids_it():
    y = np.array([0] * 150 + [1] * 50)
    with pytest.raises(ValueError, match="too frequent"):
        D.skewed_split(y, seed=0, label=0)                           # 120 > 100 rows of s0
    with pytest.raises(ValueError, match="does not occur"):
        D.skewed_split(y, seed=0, label=7)
    assert {D.skewed_split(y, seed=s)[2] for s in range(10)} == {1}
    balanced = np.array([0, 1] * 50)
    assert {D.skewed_split(balanced, seed=s)[2] for s in range(20)} == {0, 1}


def test_stsb_is_binarised_above_2_5_for_splitting_only():
    assert D.split_labels([0.0, 2.5, 2.6, 5.0], "glue/stsb").tolist() == [0, 0, 1, 1]
    assert D.split_labels([1, 0, 2], "mnli").tolist() == [1, 0, 2]


def test_select_lambda_takes_the_best_and_breaks_ties_toward_half():
    rows = [{"lam": l, "accuracy": a} for l, a in [(0.0, 0.5), (0.25, 0.7), (0.5, 0.6), (0.75, 0.7), (1.0, 0.4)]]
    assert D.select_lambda(rows, "accuracy") == 0.25
    rows[2]["accuracy"] = 0.7
    assert D.select_lambda(rows, "accuracy") == 0.5
    with pytest.raises(ValueError):
        D.select_lambda([], "accuracy")


def test_settings_need_the_endpoints_and_half_in_the_grid():
    p = load_profile("smoke")
    assert D.settings(p).lam_grid[0] == 0.0
    with pytest.raises(ValueError, match="must contain 0.5"):
        D.settings(p, lam_grid=(0.0, 0.3, 1.0))


def test_real_rte_counts_land_near_table9(shared_data):
    p = load_profile("small")
    td = D.task_data("rte", p, D.settings(p))
    c0 = D.label_counts(td.s0["label"], 2)
    c1 = D.label_counts(td.s1["label"], 2)
    assert len(td.s0) == len(td.s1) == 1000 and len(td.fullset) == 2000
    assert abs(c0[0] - 793) < 40 and abs(c1[0] - 198) < 40          # Table 9: 793/207 and 198/802
    ids = [set(x["idx"]) for x in (td.select, td.evalset)]
    assert not ids[0] & ids[1]                                      # selection and evaluation disjoint


def test_carved_task_is_disjoint_and_tiny_task_is_skipped(shared_data):
    p = load_profile("smoke")
    s = D.settings(p)
    td = D.task_data("mnli", p, s)
    assert "carved" in td.source and td.pool_rows == s.carve_rows
    parts = [set(x["idx"]) for x in (td.fullset, td.select, td.evalset)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    counts = D.label_counts(td.s0["label"], 3), D.label_counts(td.s1["label"], 3)
    assert counts[0][0] > counts[1][0]                               # label 0 is skewed toward s0
    with pytest.raises(D.TaskSkipped, match="qqp"):
        D.task_data("qqp", load_profile("small"), D.settings(load_profile("small")))


def test_chapter_pipeline_at_smoke_and_cache(shared_data, tmp_path):
    p = load_profile("smoke")
    s = D.settings(p, tasks=("rte", "stsb"), kinds=("lora",), steps={"lora": 2})
    cache = Cache(root=tmp_path, code_modules=D.CODE)
    res = D.run_chapter(p, s, cache=cache, progress=False)
    assert set(res.rows["module"]) == set(D.MODULE_ORDER)
    assert set(res.sweep["lam"]) == set(s.lam_grid)
    stsb = res.rows[(res.rows["task"] == "stsb")]
    assert (stsb["metric"] == "pearson").all() and "spearman" in stsb
    # λ = 1 / 0 are the single modules: the s0 row equals the sweep at λ = 1 on the eval part.
    r = res.rows.query("task == 'rte' and kind == 'lora' and module == 's0'")["score"].item()
    sw = res.sweep.query("task == 'rte' and kind == 'lora' and lam == 1.0 and split == 'eval'")["score"].item()
    assert r == sw
    table = D.results_table(res.rows, kinds=s.kinds)
    assert list(table.columns) == ["rte (accuracy)", "stsb (pearson)", "avg"]
    assert np.allclose(table["avg"], table.iloc[:, :2].mean(axis=1), atol=0.051)
    again = D.run_chapter(p, s, cache=cache, progress=False)          # every result now a cache hit
    assert again.rows.equals(res.rows) and again.sweep.equals(res.sweep)
    fig = D.sweep_figure(res.sweep, res.rows)
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    counts = res.counts
    assert ("reported in the paper (Table 9)", "class 0") in counts.columns
    assert counts.loc[("rte", "s0"), ("reported in the paper (Table 9)", "class 0")] == 793
    ours = counts.loc[("rte", "s0"), [("ours", "class 0"), ("ours", "class 1")]].sum()
    assert ours == p.train_size
    assert set(D.merge_effects(res.rows).index) == {"rte", "stsb"}
    # Intervals come from the kept per-row predictions: they bracket the scores the chapter reports.
    bands = D.sweep_intervals(res)
    merged = res.sweep[res.sweep["split"] == "eval"].reset_index(drop=True)
    assert np.allclose(bands["score"], merged["score"]) and (bands["score_low"] <= bands["score"] + 1e-12).all()
    assert len([a for a in D.sweep_figure(bands, res.rows).axes if a.get_visible()]) == 2
    learned = D.learned(res).set_index("task")
    labels = D.eval_labels(res.task_data["rte"])
    assert learned.loc["stsb", "reference"] == 0.0
    assert learned.loc["rte", "reference"] == max(labels.mean(), 1 - labels.mean())
    rte = learned.loc["rte"]
    assert bool(rte["learned"]) == (rte["fullset"] - 2 * rte["se"] > rte["reference"])
    gains = D.gain_intervals(res).set_index("task")
    piv = res.rows[res.rows["kind"] == "lora"].pivot_table(index="task", columns="module", values="score")
    assert np.isclose(gains.loc["rte", "merged − fullset"], piv.loc["rte", "merged, λ selected"] - piv.loc["rte", "fullset"])
    facts = D.facts(res, s)
    assert facts["n_tasks"] == "2" and facts["lora_steps"] == 2
    assert np.isclose(facts["lora_avg_full"], table.loc[("LoRA", "fullset"), "avg"])
    assert facts["lora_learned"] in {"no task", "one task of two", "both tasks"}


def test_threads_are_restored():
    import torch

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
