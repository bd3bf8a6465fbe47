"""Figures: one function per kind of figure, long-form DataFrame in, matplotlib Figure out, drawn with
seaborn in the book's one theme (`THEME`).

Every figure function ends in `show`, which puts the figure on the page itself when it runs in a
notebook kernel (as a PNG, whatever the matplotlib backend: an inherited ``MPLBACKEND=Agg`` once left the
whole book without figures) and closes it so it is never drawn twice. Outside a kernel `show` only
returns the figure, for tests and scripts.
"""
from __future__ import annotations

import io
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

# The book's theme, set once here: every figure of every chapter goes through this module.
THEME = dict(style="whitegrid", context="notebook", palette="colorblind", font_scale=0.85,
             rc={"figure.dpi": 100, "savefig.dpi": 110, "legend.frameon": False})
PANEL_HEIGHT = 2.5   # inches; with `ASPECT` four panels fill the page's width at a readable size
ASPECT = 1.3
sns.set_theme(**THEME)


def in_kernel() -> bool:
    """True inside a Jupyter kernel (a live notebook or a book build), False in scripts and tests."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def show(fig):
    """Put `fig` on the page (inside a kernel) and close it there; return it either way."""
    if in_kernel():
        from IPython.display import Image, display

        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        display(Image(buf.getvalue()))
        plt.close(fig)
    return fig


def palette(levels: Sequence) -> dict:
    """The theme's colour for each level, in order (so lines and their reference lines match)."""
    return dict(zip(levels, sns.color_palette(n_colors=max(len(levels), 1))))


def _levels(df: pd.DataFrame, column: str | None) -> list:
    return list(dict.fromkeys(df[column])) if column else []


def sweep(df: pd.DataFrame, y: str, *, x: str = "lam", hue: str | None = None, col: str | None = None,
          refs: Mapping[str, float] | pd.DataFrame | None = None, band: tuple[str, str] | None = None,
          ylabel: str | None = None, title: str | None = None, ncols: int = 4, xlabel: str = "λ",
          logy: bool | Sequence[str] = False, xlim: tuple[float, float] | None = None, sharey: bool = True,
          marks: pd.DataFrame | None = None, hue_order: Sequence | None = None,
          col_order: Sequence | None = None):
    """`y` against λ: one line per `hue`, one panel per `col` (wrapped after `ncols`).

    `refs` draws dashed horizontal reference lines: a mapping label → value (the same lines in every
    panel), or a DataFrame with columns `label`, `value` and optionally `col` / `hue` columns (a line per
    panel, in its hue's colour). `band` = (low, high) columns shades an interval around each line (e.g. a
    bootstrap confidence interval). `marks` (rows of x, y and optionally col / hue) are starred points,
    e.g. a selected λ. `logy` puts every panel (True) or the named panels on a log axis.
    `hue_order` / `col_order` fix the lines' and panels' order (default: first appearance in `df`).
    """
    if df.empty:
        raise ValueError("nothing to plot: the DataFrame is empty")
    for c in [x, y, hue, col, *(band or ())]:
        if c is not None and c not in df.columns:
            raise ValueError(f"column {c!r} not in the DataFrame (columns: {list(df.columns)})")
    hues = list(hue_order) if hue_order is not None else _levels(df, hue)
    panels = list(col_order) if col_order is not None else _levels(df, col)
    colours = palette(hues)
    g = sns.relplot(data=df, x=x, y=y, hue=hue, hue_order=hues or None, palette=colours if hue else None,
                    col=col, col_order=panels or None, col_wrap=min(ncols, len(panels)) if col else None,
                    kind="line", marker="o", markersize=4, errorbar=None, legend=False,
                    height=PANEL_HEIGHT, aspect=ASPECT, facet_kws={"sharey": sharey, "sharex": True})
    axes = g.axes_dict if col else {None: g.ax}
    handles = {str(h): Line2D([], [], color=colours[h], marker="o", markersize=4) for h in hues}
    ref_rows = _ref_rows(refs)
    # A reference line of a hue level wears that level's colour; the others get colours of their own.
    free = list(dict.fromkeys(str(r["label"]) for r in ref_rows if not (hue and r.get(hue) in colours)))
    free_colours = dict(zip(free, sns.color_palette("dark", n_colors=len(hues) + len(free))[len(hues):]))
    for panel, ax in axes.items():
        sub = df if panel is None else df[df[col] == panel]
        if band is not None:
            for h, gg in (sub.groupby(hue, sort=False) if hue else [(None, sub)]):
                gg = gg.sort_values(x)
                ax.fill_between(gg[x], gg[band[0]], gg[band[1]], alpha=0.18, lw=0,
                                color=colours[h] if hue else None)
        for r in ref_rows:
            if col and col in r and pd.notna(r[col]) and r[col] != panel:
                continue
            h = r.get(hue) if hue else None
            colour = colours[h] if h in colours else free_colours[str(r["label"])]
            ax.axhline(r["value"], ls="--", lw=1.1, color=colour)
            handles.setdefault(str(r["label"]), Line2D([], [], color=colour, ls="--", lw=1.1))
        if marks is not None:
            m = marks if panel is None or col not in marks else marks[marks[col] == panel]
            for _, r in m.iterrows():
                colour = colours.get(r[hue]) if hue and hue in r else "k"
                ax.plot([r[x]], [r[y]], marker="*", ms=13, ls="", color=colour, mec="k", mew=0.5)
        if logy is True or (not isinstance(logy, bool) and panel in logy):
            ax.set_yscale("log")
        if xlim is not None:
            ax.set_xlim(*xlim)
    g.set_axis_labels(xlabel, y if ylabel is None else ylabel)
    if col:
        g.set_titles("{col_name}")
    if handles:
        g.add_legend(legend_data=handles, title=hue or "")
        if col and min(ncols, len(panels)) >= 3:  # a wide grid keeps the page's width for its panels
            sns.move_legend(g, "upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 4),
                            title=None, frameon=False)
    if title:
        g.figure.suptitle(title, y=1.02)
    return show(g.figure)


def _ref_rows(refs) -> list[dict]:
    if refs is None:
        return []
    if isinstance(refs, pd.DataFrame):
        missing = {"label", "value"} - set(refs.columns)
        if missing:
            raise ValueError(f"refs needs columns 'label' and 'value' (missing {sorted(missing)})")
        return refs.to_dict("records")
    return [{"label": k, "value": float(v)} for k, v in refs.items()]


def bars(df: pd.DataFrame, y: str, *, x: str, hue: str | None = None, col: str | None = None,
         ylabel: str | None = None, title: str | None = None, chance: float | None = None,
         rotate: float = 0, logy: bool = False, sharey: bool = True, labels: str | None = None):
    """Grouped bars of `y` by `x` (and `hue`; one panel per `col`), with an optional chance line.
    `labels` is a format (e.g. ``"{:.0%}"``) for the value printed on each bar."""
    if df.empty:
        raise ValueError("nothing to plot: the DataFrame is empty")
    xs, hues, panels = _levels(df, x), _levels(df, hue), _levels(df, col)
    g = sns.catplot(data=df, x=x, y=y, hue=hue, order=xs, hue_order=hues or None, col=col,
                    col_order=panels or None, kind="bar", errorbar=None, legend=bool(hue),
                    height=3.0, aspect=bar_panel_width(len(xs), len(hues)) / 3.0, sharey=sharey)
    for ax in g.axes.flat:
        if chance is not None:
            ax.axhline(chance, ls=":", color="k", lw=1)
            ax.text(1.0, chance, " chance", transform=ax.get_yaxis_transform(), va="center", fontsize=8)
        if labels is not None:
            for container in ax.containers:
                ax.bar_label(container, labels=[labels.format(v) for v in container.datavalues], fontsize=7,
                             padding=1)
        if logy:
            ax.set_yscale("log")
        if rotate:
            ax.tick_params(axis="x", labelrotation=rotate)
            for t in ax.get_xticklabels():
                t.set_horizontalalignment("right")
        else:  # long group names wrap onto several lines instead of running into each other
            ax.set_xticks(ax.get_xticks(), [wrap_label(t.get_text(), bar_label_chars(len(xs), len(hues)))
                                            for t in ax.get_xticklabels()])
    g.set_axis_labels("", y if ylabel is None else ylabel)
    if col:
        g.set_titles("{col_name}")
    if title:
        g.figure.suptitle(title, y=1.03)
    return show(g.figure)


def wrap_label(text: str, width: int) -> str:
    """`text` broken at spaces into lines of at most `width` characters (a longer word stays whole)."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_long_words=False)) or text


def bar_label_chars(n_groups: int, n_hues: int = 1) -> int:
    """How many characters of a group name fit under one group of bars (about 11 per inch at 8 pt)."""
    inches = bar_panel_width(n_groups, n_hues) / max(n_groups, 1)
    return max(6, int(11 * inches))


def bar_panel_width(n_groups: int, n_hues: int = 1) -> float:
    """Inches for one panel of grouped bars: room for every bar, never wider than the page."""
    return min(6.5, max(3.0, 1.0 + 0.4 * n_groups * (1 + 0.3 * max(n_hues - 1, 0))))


def heatmap(matrix, labels: Sequence[str], *, title: str | None = None, fmt: str = ".2f",
            cbar_label: str | None = None):
    """A small annotated heatmap (e.g. a matrix of relative errors)."""
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.6 + 0.8 * n, 1.0 + 0.7 * n))
    sns.heatmap(pd.DataFrame(matrix, index=labels, columns=labels), annot=True, fmt=fmt, cmap="viridis",
                square=True, ax=ax, cbar_kws={"label": cbar_label} if cbar_label else None)
    ax.tick_params(axis="x", labelrotation=45)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return show(fig)
