"""The operator diagram (the counterpart of the paper's Figure 1): addition, negation and analogy on
the three module kinds, each drawn from toy modules composed by :mod:`pemnb.arithmetic`.

Nothing in the picture is drawn by hand: every glyph shows the tensors of a toy module, and the
result glyph of each panel is what the operator in ``pemnb.arithmetic`` returns for the inputs beside
it. So the figure cannot drift from the code, and restyling it happens here only.

Glyphs: a LoRA module is its factors B (a column, d × r) and A (a row, r × d) with r = 1, each entry a
cell coloured by sign and size; an (IA)³ module is its vector l as bars around the identity l = 1; a
full fine-tune is its task vector τ as an arrow from θ_pre in a two-dimensional weight space.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import matplotlib.pyplot as plt
import torch
from matplotlib import colors as mcolors
from matplotlib.patches import FancyArrowPatch, Rectangle

from . import arithmetic
from . import plots

OPERATORS = ("addition", "negation", "analogy")
KIND_TITLES = {"lora": "LoRA", "ia3": "(IA)$^3$", "fft": "full fine-tune"}

# λ at which each operator is drawn (analogy uses the paper's range near 1 only for the sweep; a middle
# value makes the language-model difference visible in the picture).
DRAWN_LAMBDA = {"addition": 0.5, "negation": 0.6, "analogy": 0.7}

# The equations under each panel, as the official code implements them (shared/paper/README.md).
EQUATIONS = {
    ("addition", "lora"): r"$A=\lambda A_1+(1-\lambda)A_2,\ \ B=\lambda B_1+(1-\lambda)B_2$",
    ("addition", "ia3"): r"$l=\lambda l_1+(1-\lambda)\,l_2$",
    ("addition", "fft"): r"$\theta=\theta_{pre}+\lambda\tau_1+(1-\lambda)\tau_2$",
    ("negation", "lora"): r"$A\to-\lambda A,\ B$ kept: $\Delta W\to-\lambda\Delta W$",
    ("negation", "ia3"): r"$l\to1-\lambda(l-1)$",
    ("negation", "fft"): r"$\theta=\theta_{pre}-\lambda\tau$",
    ("analogy", "lora"): r"$A=\lambda A_c+(1-\lambda)(A_t+A_s),\ \ B=\lambda B_c+(1-\lambda)(B_t-B_s)$",
    ("analogy", "ia3"): r"$l=1+\lambda\delta_c+(1-\lambda)(\delta_t-\delta_s),\ \ \delta=l-1$",
    ("analogy", "fft"): r"$\theta=\theta_{pre}+\lambda\tau_c+(1-\lambda)(\tau_t-\tau_s)$",
}

# Inputs of each operator, by the symbol the equations use.
INPUT_NAMES = {"addition": (r"$\theta_1$", r"$\theta_2$"), "negation": (r"$\theta$",),
               "analogy": (r"$\theta_c$", r"$\theta_t$", r"$\theta_s$")}
INPUT_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c")
RESULT_COLOR = "#7f3fbf"
_CMAP = plt.get_cmap("RdBu_r")


@dataclass(frozen=True)
class Panel:
    """One operator on one kind: the toy inputs, λ, and the result `pemnb.arithmetic` returns."""

    operator: str
    kind: str
    lam: float
    inputs: tuple[dict, ...]
    result: dict
    equation: str


def toy_modules(kind: str) -> tuple[dict, dict, dict]:
    """Three small, fixed modules of `kind` (one layer, d = 4, LoRA rank 1) with distinct patterns."""
    if kind == "lora":
        a = ([0.9, -0.3, 0.5, -0.7], [0.8, 0.2, -0.6, 0.4], [0.7, -0.5, 0.1, 0.9])
        b = ([0.6, -0.8, 0.3, 0.5], [-0.4, 0.7, 0.6, -0.2], [0.5, 0.4, -0.7, 0.3])
        return tuple({"layer.lora_A.weight": torch.tensor([ai]), "layer.lora_B.weight": torch.tensor(bi).reshape(4, 1)}
                     for ai, bi in zip(a, b))
    if kind == "ia3":
        ls = ([1.35, 0.8, 1.15, 0.9], [0.85, 1.3, 1.05, 1.2], [1.1, 0.75, 1.25, 0.95])
        return tuple({"layer.ia3_l": torch.tensor(l)} for l in ls)
    if kind == "fft":
        taus = ([0.8, 0.35], [0.15, 0.85], [-0.3, 0.55])
        return tuple({"layer.weight": torch.tensor(t)} for t in taus)
    raise ValueError(f"unknown module kind {kind!r}; expected one of {arithmetic.KINDS}")


def panel(operator: str, kind: str, lam: float | None = None) -> Panel:
    """The toy inputs of `operator` on `kind` and the result pemnb.arithmetic computes at λ."""
    if operator not in OPERATORS:
        raise ValueError(f"unknown operator {operator!r}; expected one of {OPERATORS}")
    lam = DRAWN_LAMBDA[operator] if lam is None else float(lam)
    t1, t2, t3 = toy_modules(kind)
    if operator == "addition":
        inputs, result = (t1, t2), arithmetic.merge(t1, t2, lam, kind)
    elif operator == "negation":
        inputs, result = (t1,), arithmetic.negate(t1, kind, lam)
    else:
        inputs, result = (t1, t2, t3), arithmetic.analogy(t1, t2, t3, lam, kind)
    return Panel(operator, kind, lam, inputs, result, EQUATIONS[(operator, kind)])


# ------------------------------------------------------------------------------------------- glyphs
GLYPH_WIDTH = 1.0


def _lora_glyph(ax, x: float, state: Mapping[str, torch.Tensor], edge: str, label: str) -> None:
    """B as a column of 4 cells, A as a row of 4 cells to its upper right (ΔW = BA)."""
    (a, b), = arithmetic.lora_pairs(state).values()
    norm = mcolors.Normalize(-1.2, 1.2)
    cell = 0.17
    for i, v in enumerate(b.flatten().tolist()):  # B, top to bottom
        ax.add_patch(Rectangle((x + 0.05, 1.25 - (i + 1) * cell), cell, cell, fc=_CMAP(norm(v)), ec=edge, lw=1.2))
    for j, v in enumerate(a.flatten().tolist()):  # A, left to right
        ax.add_patch(Rectangle((x + 0.28 + j * cell, 1.33), cell, cell, fc=_CMAP(norm(v)), ec=edge, lw=1.2))
    ax.text(x + 0.13, 1.31, "B", ha="center", va="bottom", fontsize=7, color=edge)
    ax.text(x + 0.97, 1.415, "A", ha="left", va="center", fontsize=7, color=edge)
    ax.text(x + 0.5, 0.35, label, ha="center", va="center", fontsize=9, color=edge)


def _ia3_glyph(ax, x: float, state: Mapping[str, torch.Tensor], edge: str, label: str) -> None:
    """Bars of l − 1 from a baseline at the identity l = 1 (drawn at height 1.0; scale 1.2 per unit)."""
    (l,) = [v for k, v in state.items() if arithmetic.role(k) == "ia3_l"]
    base = 1.0
    ax.plot([x + 0.02, x + 0.98], [base, base], color="0.4", lw=0.8, ls="--")
    for j, v in enumerate(l.flatten().tolist()):
        h = 1.2 * (v - 1.0)
        ax.add_patch(Rectangle((x + 0.08 + j * 0.22, min(base, base + h)), 0.18, abs(h), fc=edge, ec=edge, alpha=0.85))
    ax.text(x + 0.5, 0.35, label, ha="center", va="center", fontsize=9, color=edge)


def _fft_glyph(ax, x: float, state: Mapping[str, torch.Tensor], edge: str, label: str) -> None:
    """τ as an arrow from θ_pre (a dot) in a two-dimensional weight space."""
    (tau,) = state.values()
    ox, oy = x + 0.5, 1.0
    ax.add_patch(Rectangle((x + 0.05, 0.6), 0.9, 0.8, fc="none", ec="0.8", lw=0.6))
    dx, dy = 0.45 * float(tau[0]), 0.45 * float(tau[1])
    ax.add_patch(FancyArrowPatch((ox, oy), (ox + dx, oy + dy), arrowstyle="-|>", mutation_scale=9, color=edge, lw=1.6))
    ax.plot([ox], [oy], "o", ms=3, color="k")
    ax.text(x + 0.5, 0.35, label, ha="center", va="center", fontsize=9, color=edge)


_GLYPHS = {"lora": _lora_glyph, "ia3": _ia3_glyph, "fft": _fft_glyph}


def _tokens(p: Panel) -> list:
    """What a panel shows, left to right: strings are operator symbols, ints index the inputs,
    None is the result."""
    lam = f"{p.lam:g}"
    mu = f"{1 - p.lam:g}"
    if p.operator == "addition":
        return [lam, 0, rf"$\oplus$ {mu}", 1, "=", None]
    if p.operator == "negation":
        return [rf"$\ominus_{{{lam}}}$", 0, "=", None]
    return [lam, 0, rf"$\oplus$ {mu}(", 1, r"$\ominus$", 2, ")=", None]


def draw_panel(ax, p: Panel) -> None:
    """Draw one panel's glyphs, operator symbols and equation into `ax`."""
    widths = [GLYPH_WIDTH if not isinstance(t, str) else 0.12 + 0.09 * len(t.replace("$", "").replace("\\", ""))
              for t in _tokens(p)]
    total = sum(widths) + 0.08 * (len(widths) - 1)
    x = (7.0 - total) / 2
    names = INPUT_NAMES[p.operator]
    for token, w in zip(_tokens(p), widths):
        if isinstance(token, str):
            ax.text(x + w / 2, 1.0, token, ha="center", va="center", fontsize=10)
        elif token is None:
            _GLYPHS[p.kind](ax, x, p.result, RESULT_COLOR, "result")
        else:
            _GLYPHS[p.kind](ax, x, p.inputs[token], INPUT_COLORS[token], names[token])
        x += w + 0.08
    ax.text(3.5, -0.05, p.equation, ha="center", va="center", fontsize=8.5)
    ax.text(6.95, 1.9, f"drawn at λ = {p.lam:g}", ha="right", va="top", fontsize=6.5, color="0.45")
    ax.set_xlim(0, 7.0)
    ax.set_ylim(-0.3, 2.0)
    ax.set_axis_off()


def operator_diagram(kinds: tuple[str, ...] = arithmetic.KINDS, operators: tuple[str, ...] = OPERATORS):
    """A Figure with one panel per (operator, kind): rows are operators, columns module kinds (put on
    the page by :func:`pemnb.plots.show` inside a kernel)."""
    for k in kinds:
        if k not in arithmetic.KINDS:
            raise ValueError(f"unknown module kind {k!r}; expected one of {arithmetic.KINDS}")
    fig, axes = plt.subplots(len(operators), len(kinds), figsize=(4.6 * len(kinds), 1.75 * len(operators)),
                             squeeze=False)
    for i, op in enumerate(operators):
        for j, kind in enumerate(kinds):
            ax = axes[i][j]
            draw_panel(ax, panel(op, kind))
            ax.set_gid(f"{op}/{kind}")
            if i == 0:
                ax.set_title(KIND_TITLES[kind], fontsize=11, fontweight="bold")
        axes[i][0].text(-0.02, 0.5, op, transform=axes[i][0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=11, fontweight="bold")
    fig.text(0.5, 0.005, "LoRA cells: red > 0 > blue.  (IA)$^3$ bars: l − 1 around the identity l = 1 (dashed).  "
             "Full fine-tune: task vector τ from θ$_{pre}$ (dot).", ha="center", va="bottom", fontsize=7.5, color="0.35")
    fig.tight_layout(rect=(0.02, 0.03, 1, 1))
    return plots.show(fig)
