"""Figures: one function per kind of figure, DataFrame in, matplotlib Figure out."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd


def sweep(df: pd.DataFrame, y: str, *, x: str = "lam", hue: str | None = None, col: str | None = None,
          refs: Mapping[str, float] | None = None, ylabel: str | None = None, title: str | None = None,
          ncols: int = 4, xlabel: str = "λ"):
    """Line plot of `y` against λ, one line per `hue`, one panel per `col`; `refs` draws labelled
    horizontal reference lines (e.g. the single modules) in every panel."""
    if df.empty:
        raise ValueError("nothing to plot: the DataFrame is empty")
    panels = list(dict.fromkeys(df[col])) if col else [None]
    n = len(panels)
    cols = min(ncols, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        sub = df if panel is None else df[df[col] == panel]
        groups = sub.groupby(hue, sort=False) if hue else [(None, sub)]
        for name, g in groups:
            g = g.sort_values(x)
            ax.plot(g[x], g[y], marker="o", ms=3, label=name)
        for i, (label, value) in enumerate((refs or {}).items()):
            ax.axhline(value, ls="--", lw=1, color=f"C{i + 5}", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel or y)
        if panel is not None:
            ax.set_title(str(panel))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def bars(df: pd.DataFrame, y: str, *, x: str, hue: str | None = None, ylabel: str | None = None,
         title: str | None = None, chance: float | None = None):
    """Grouped bar chart of `y` by `x` (and `hue`), with an optional chance line."""
    if df.empty:
        raise ValueError("nothing to plot: the DataFrame is empty")
    table = df.pivot_table(index=x, columns=hue, values=y, sort=False) if hue else df.set_index(x)[[y]]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(table), 3.4))
    table.plot.bar(ax=ax, rot=0)
    if chance is not None:
        ax.axhline(chance, ls=":", color="k", lw=1, label="chance")
        ax.legend(fontsize=8)
    ax.set_ylabel(ylabel or y)
    ax.set_xlabel("")
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def heatmap(matrix, labels: Sequence[str], *, title: str | None = None, fmt: str = "{:.2f}"):
    """A small annotated heatmap (e.g. a matrix of relative errors)."""
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(labels), 0.8 + 0.7 * len(labels)))
    im = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, fmt.format(matrix[i][j]), ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
