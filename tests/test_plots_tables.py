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
    assert sorted(round(v, 2) for c in fig.axes[0].containers for v in c.datavalues) == [.3, .4, .8, .9]
    fig = plots.heatmap([[0, 1], [1, 0]], ["x", "y"])
    assert fig.axes[0].get_xticklabels()[1].get_text() == "y"


def test_per_panel_references_follow_their_panel_and_hue_colour():
    df = sweep_df()
    refs = pd.DataFrame([{"task": "rte", "kind": "lora", "label": "lora fullset", "value": 0.7},
                         {"task": "cola", "kind": "ia3", "label": "ia3 fullset", "value": 0.6}])
    fig = plots.sweep(df, "accuracy", hue="kind", col="task", refs=refs, logy=["cola"], sharey=False,
                      marks=pd.DataFrame([{"lam": 0.5, "accuracy": 0.55, "task": "sst2", "kind": "ia3"}]))
    rte, sst2, cola = fig.axes[:3]
    dashed = lambda ax: [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert [ln.get_ydata()[0] for ln in dashed(rte)] == [0.7] and not dashed(sst2)
    lora_line = next(ln for ln in rte.lines if ln.get_linestyle() == "-")
    assert dashed(rte)[0].get_color() == lora_line.get_color()  # the fullset line wears its kind's colour
    assert cola.get_yscale() == "log" and rte.get_yscale() == "linear"
    assert any(ln.get_marker() == "*" for ln in sst2.lines)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["lora", "ia3", "lora fullset", "ia3 fullset"]


def test_line_and_panel_order_can_be_given():
    fig = plots.sweep(sweep_df(), "accuracy", hue="kind", col="task", col_order=["cola", "rte", "sst2"],
                      hue_order=["ia3", "lora"])
    assert [ax.get_title() for ax in fig.axes[:3]] == ["cola", "rte", "sst2"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ia3", "lora"]


def test_bad_columns_and_refs_are_named():
    with pytest.raises(ValueError, match="'acc'"):
        plots.sweep(sweep_df(), "acc", hue="kind")
    with pytest.raises(ValueError, match="label"):
        plots.sweep(sweep_df(), "accuracy", refs=pd.DataFrame({"value": [1.0]}))


def test_show_returns_the_figure_outside_a_kernel():
    fig = plots.heatmap([[0, 1], [1, 0]], ["x", "y"])
    assert not plots.in_kernel() and plots.show(fig) is fig


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
    assert prov.loc["steps × batch", "value"] == f"{p.steps} × {p.batch_size}"
    own = tables.provenance(p, own_settings=True, steps="RTE lora 300×8")
    # a chapter with its own settings shows them, never the profile's shared ones it does not use
    assert "steps × batch" not in own.index and "learning rates" not in own.index and "LoRA r / α" not in own.index
    assert own.loc["steps", "value"] == "RTE lora 300×8" and own.loc["seed", "value"] == 0
    rep = tables.reported([["GPT-2", 0.10, 5.8, 16.44]], ["method", "toxicity", "toxic %", "PPL"], "Table 11")
    assert rep.columns[0][0] == "reported in the paper (Table 11)"


def test_numbers_are_written_for_reading_and_cells_are_never_cut():
    assert [tables.readable(v) for v in (0.092, 12.5, 25.7214, 1545.31, 2.2e13, 0.0, -0.4567, 78.04)] == \
        ["0.092", "12.5", "25.7", "1545.3", "2.20e+13", "0", "-0.457", "78"]
    long = "x" * 120
    html = pd.DataFrame({"value": [long, 0.092000]}).to_html()
    assert long in html and "0.092</td>" in html and "0.092000" not in html


def test_long_bar_group_names_wrap_instead_of_overlapping():
    import matplotlib.pyplot as plt

    from pemnb.plots import bar_label_chars, wrap_label

    assert wrap_label("ablation (−every parameter)", 12) == "ablation\n(−every\nparameter)"
    assert wrap_label("θ", 12) == "θ"
    names = ["identity (no adaptation)", "trained θ", "negated ⊖θ", "ablation (−every parameter)"]
    df = pd.DataFrame({"module": names * 2, "kind": ["lora"] * 4 + ["ia3"] * 4, "accuracy": [0.5] * 8})
    fig = plots.bars(df, "accuracy", x="module", hue="kind")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    width = bar_label_chars(4, 2)
    assert [lbl.replace("\n", " ") for lbl in labels] == names
    assert all(len(line) <= width for lbl in labels for line in lbl.split("\n") if " " in lbl)
    plt.close(fig)
