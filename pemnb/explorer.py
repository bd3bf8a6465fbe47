"""The λ explorer: a slider over λ (and a menu over methods) that composes a chapter's modules in place
and shows the result at once.

Each *method* is a pair of functions: ``compose(λ)`` returns a module state (typically
``pemnb.sweep.pair("paper", θ₁, θ₂)`` or a ``pemnb.arithmetic`` operator), and ``score(state)`` writes
it into the live model through the bench's :class:`pemnb.modules.StateWriter` (``bench.use``, the
sweep engine's writer: one batched in-place copy, no new adapter) and measures it — accuracy on a small
evaluation set, or fresh continuations with their toxicity. :meth:`Explorer.respond` is the whole
callback, so it is tested without a browser; the widgets only call it.

A built page has no kernel behind it, so there :meth:`Explorer.show` draws the precomputed curve instead,
with a line saying how to get the live version. Live means: inside a Jupyter kernel and not a book build
(the Makefile's builds set ``PEMNB_PROGRESS=0``); ``PEMNB_EXPLORE=1`` or ``0`` decides explicitly.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from . import plots, progress

EXPLORE_ENV = "PEMNB_EXPLORE"
State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Method:
    """How one menu entry composes a state at λ and scores it on the live model."""

    compose: Callable[[float], State]
    score: Callable[[State], Mapping[str, Any]]


def live_default() -> bool:
    """Whether to show the live widgets: $PEMNB_EXPLORE if set, else in a kernel outside a book build."""
    env = os.environ.get(EXPLORE_ENV, "").strip().lower()
    if env:
        return env in ("1", "true", "yes", "on")
    return plots.in_kernel() and progress.enabled()


@dataclass
class Explorer:
    """A λ slider over `grid` and a menu over `methods`; `curve` holds the precomputed rows
    ``{lam, method, metric…}`` the static page draws, `metric` the column on its y axis."""

    methods: Mapping[str, Method]
    grid: Sequence[float]
    curve: pd.DataFrame
    metric: str
    title: str = "λ explorer"
    notebook: str = "this notebook"
    ylabel: str | None = None
    history: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if not self.methods:
            raise ValueError("an explorer needs at least one method")
        self.grid = sorted(float(x) for x in self.grid)
        if not self.grid:
            raise ValueError("the λ grid is empty")
        missing = {"lam", "method", self.metric} - set(self.curve.columns)
        if missing:
            raise ValueError(f"the precomputed curve lacks columns {sorted(missing)}")

    # ------------------------------------------------------------------------------ the callback
    def respond(self, lam: float, method: str | None = None) -> dict[str, Any]:
        """Compose `method` at λ, write it into the live model, measure it: the metrics plus the
        time each step took (``compose_ms``, ``score_ms`` = write + measure, ``total_ms``)."""
        method = method if method is not None else next(iter(self.methods))
        if method not in self.methods:
            raise ValueError(f"unknown method {method!r}; expected one of {list(self.methods)}")
        lam = float(lam)
        if not self.grid[0] - 1e-9 <= lam <= self.grid[-1] + 1e-9:
            raise ValueError(f"λ = {lam} is outside the slider's range [{self.grid[0]}, {self.grid[-1]}]")
        m = self.methods[method]
        t0 = time.perf_counter()
        state = m.compose(lam)
        t1 = time.perf_counter()
        metrics = dict(m.score(state))
        t2 = time.perf_counter()
        row = {"lam": lam, "method": method, **metrics, "compose_ms": 1e3 * (t1 - t0),
               "score_ms": 1e3 * (t2 - t1), "total_ms": 1e3 * (t2 - t0)}
        self.history.append(row)
        return row

    def timings(self, lams: Sequence[float] | None = None, method: str | None = None) -> pd.DataFrame:
        """One :meth:`respond` per λ (default: the grid); the rows with their times, in ms."""
        return pd.DataFrame([self.respond(lam, method) for lam in (self.grid if lams is None else lams)])

    @staticmethod
    def describe(row: Mapping[str, Any]) -> str:
        """One line for a response: λ, method, the scalar metrics and the response time."""
        metrics = ", ".join(f"{k} {v:.1%}" if k.startswith(("accuracy", "toxic_frac")) else f"{k} {v:.3g}"
                            for k, v in row.items()
                            if isinstance(v, (int, float)) and k not in ("lam", "compose_ms", "score_ms", "total_ms"))
        return (f"λ = {row['lam']:.2f} · {row['method']} · {metrics} · composed in {row['compose_ms']:.2f} ms, "
                f"written and measured in {row['score_ms']:.0f} ms")

    # ------------------------------------------------------------------------------ the page
    def widget(self):
        """ipywidgets: a λ slider, a method menu (when there are several) and the result below them."""
        import ipywidgets as w
        from IPython.display import display

        step = min((b - a for a, b in zip(self.grid, self.grid[1:])), default=0.1)
        slider = w.FloatSlider(value=self.grid[len(self.grid) // 2], min=self.grid[0], max=self.grid[-1],
                               step=step, description="λ", continuous_update=False, readout_format=".2f")
        menu = w.Dropdown(options=list(self.methods), description="method")
        out = w.Output()

        def update(_=None):
            row = self.respond(slider.value, menu.value)
            out.clear_output(wait=True)
            with out:
                print(self.describe(row))
                for value in row.values():
                    if isinstance(value, pd.DataFrame):
                        display(value)

        slider.observe(update, names="value")
        menu.observe(update, names="value")
        update()
        controls = [slider, menu] if len(self.methods) > 1 else [slider]
        return w.VBox([w.HTML(f"<b>{self.title}</b>"), w.HBox(controls), out])

    def static_figure(self):
        """The precomputed curve, one line per method."""
        return plots.sweep(self.curve, self.metric, hue="method", ylabel=self.ylabel or self.metric,
                           title=f"{self.title} (precomputed)")

    def show(self, live: bool | None = None):
        """The widgets in a live kernel; on a built page the precomputed curve and how to go live."""
        from IPython.display import Markdown, display

        if live_default() if live is None else live:
            return display(self.widget())
        self.static_figure()
        controls = "a λ slider and a method menu" if len(self.methods) > 1 else "a λ slider"
        display(Markdown(f"*Static page: this is the precomputed curve. For the live explorer ({controls}; every "
                         f"move recomposes the modules in place and re-scores them at once), open `{self.notebook}` "
                         f"in Jupyter and run it (or set `PEMNB_EXPLORE=1`).*"))


# ---------------------------------------------------------------------------------- scorers
def classifier_scorer(bench, batches) -> Callable[[State], dict[str, float]]:
    """``score(state)`` for a ClassifierBench: written through the bench's StateWriter, GLUE metrics
    on `batches` (not cached: the point is to recompute)."""
    from .evaluate import classify

    def score(state: State) -> dict[str, float]:
        bench.use(state)
        return {k: float(v) for k, v in classify(bench.model, batches, bench.task).items()}

    return score


def choice_scorer(bench, evalsets: Mapping[str, Any], batch_size: int = 16) -> Callable[[State], dict[str, float]]:
    """``score(state)`` for chapter 02's decoder: accuracy of constrained answering on each task."""
    from .multitask import answers

    def score(state: State) -> dict[str, float]:
        out = {f"accuracy {t}": answers(bench, state, es, batch_size)["accuracy"] for t, es in evalsets.items()}
        out["accuracy (mean)"] = sum(out.values()) / len(out)
        return out

    return score


def toxicity_scorer(bench, scorer, prompt: str, n: int, *, max_new_tokens: int = 32, seed: int = 0,
                    top_k: int = 50, temperature: float = 1.0, shown: int = 4) -> Callable[[State], dict[str, Any]]:
    """``score(state)`` for chapter 03: `n` FRESH continuations of `prompt` (a new seed every call, so
    the reader sees new text), their mean toxicity and share above 0.5, and a table of a few of them."""
    from .evaluate import sample
    from .unlearning import toxicity_summary

    calls = {"n": 0}

    def score(state: State) -> dict[str, Any]:
        bench.use(state)
        calls["n"] += 1
        texts = sample(bench.model, bench.tokenizer, prompt, n, top_k=top_k, temperature=temperature,
                       max_new_tokens=max_new_tokens, seed=seed + 1000 * calls["n"], batch_size=n, progress=False)
        scores = [float(s) for s in scorer(texts)]
        table = pd.DataFrame({"continuation": texts[:shown], f"toxicity ({scorer.name})": scores[:shown]})
        return {**toxicity_summary(scores), "continuations": table}

    return score


# ---------------------------------------------------------------------------------- menus
def merge_methods(pairs: Mapping[str, tuple[State, State]], scorers: Mapping[str, Callable[[State], Mapping]],
                  label: str = "{kind}: θ₁ ⊕ θ₂") -> dict[str, Method]:
    """One menu entry per kind: λθ₁ + (1−λ)θ₂ (LoRA through the sweep engine's ``pair('paper', …)``,
    the other kinds through ``pemnb.arithmetic.merge``), scored by that kind's scorer."""
    from .arithmetic import merge
    from .sweep import pair

    out = {}
    for kind, (t1, t2) in pairs.items():
        compose = pair("paper", t1, t2) if kind == "lora" else (lambda lam, a=t1, b=t2, k=kind: merge(a, b, lam, k))
        out[label.format(kind=kind)] = Method(compose, scorers[kind])
    return out


def negate_methods(modules: Mapping[str, State], scorers: Mapping[str, Callable[[State], Mapping]],
                   label: str = "{kind}: ⊖_λ θ") -> dict[str, Method]:
    """One menu entry per kind: the scaled negation ``pemnb.arithmetic.negate(θ, kind, λ)``."""
    from .arithmetic import negate

    return {label.format(kind=kind): Method(lambda lam, t=theta, k=kind: negate(t, k, lam), scorers[kind])
            for kind, theta in modules.items()}
