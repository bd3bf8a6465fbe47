"""Figures and tables: DataFrame in, Figure / DataFrame out, with clear errors on empty input."""
import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pemnb import plots, tables  # noqa: E402
from pemnb.profiles import load_profile  # noqa: E402


def sweep_df():
    return pd.DataFrame([{"lam": l / 4, "kind": k, "task": t, "accuracy": 0.5 + l / 10}
                         for l in range(5) for k in ("lora", "ia3") for t in ("rte", "sst2", "cola")])


def test_sweep_draws_one_line_per_hue_and_one_panel_per_col():
    fig = plots.sweep(sweep_df(), "accuracy", hue="kind", col="task", refs={"chance": 0.5}, ncols=2)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3 and [ax.get_title() for ax in visible] == ["rte", "sst2", "cola"]
    assert len(visible[0].lines) == 3  # two kinds + the reference line
    assert list(visible[0].lines[0].get_xdata()) == [0, 0.25, 0.5, 0.75, 1.0]


def test_bars_and_heatmap():
    df = pd.DataFrame({"module": ["a", "a", "b", "b"], "kind": ["lora", "ia3"] * 2, "accuracy": [.9, .8, .4, .3]})
    fig = plots.bars(df, "accuracy", x="module", hue="kind", chance=0.5)
    assert len(fig.axes[0].patches) == 4
    fig = plots.heatmap([[0, 1], [1, 0]], ["x", "y"])
    assert fig.axes[0].get_xticklabels()[1].get_text() == "y"


def test_empty_input_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        plots.sweep(pd.DataFrame(), "accuracy")
    with pytest.raises(ValueError, match="no results"):
        tables.results([], index="a", columns="b", values="c")


def test_results_table_with_average_and_order():
    rows = [{"task": t, "module": m, "acc": v} for t, vals in [("rte", (0.6, 0.7)), ("sst2", (0.8, 0.9))]
            for m, v in zip(("s0", "merged"), vals)]
    t = tables.results(rows, index="task", columns="module", values="acc", average=True, order=["merged", "s0"])
    assert list(t.columns) == ["merged", "s0"]
    assert t.loc["avg", "merged"] == pytest.approx(0.8) and t.loc["avg", "s0"] == pytest.approx(0.7)
    assert tables.percent(t).loc["rte", "s0"] == 60.0


def test_provenance_and_reported_tables_say_where_numbers_come_from():
    p = load_profile("smoke")
    prov = tables.provenance(p, scorer="alt-profanity-check", train_rows=64)
    assert prov.loc["profile", "value"] == "smoke" and prov.loc["scorer", "value"] == "alt-profanity-check"
    assert prov.loc["seed", "value"] == 0 and "train rows" in prov.index
    rep = tables.reported([["GPT-2", 0.10, 5.8, 16.44]], ["method", "toxicity", "toxic %", "PPL"], "Table 11")
    assert rep.columns[0][0] == "reported in the paper (Table 11)"
