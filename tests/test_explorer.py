"""The λ explorer: the callback composes in place through the bench's StateWriter and measures, without a
browser; the widgets call it; the static page draws the precomputed curve."""
import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pemnb import arithmetic as A  # noqa: E402
from pemnb import data, explorer as X  # noqa: E402
from pemnb.cache import Cache  # noqa: E402
from pemnb.classify import ClassifierBench  # noqa: E402
from pemnb.modules import read_state  # noqa: E402
from pemnb.profiles import load_profile  # noqa: E402
from pemnb.sweep import pair  # noqa: E402


@pytest.fixture(scope="module")
def bench_and_modules(tmp_path_factory):
    profile = load_profile("smoke", steps=3, train_size=16, eval_size=24)
    bench = ClassifierBench(profile, "glue/sst2", "lora", cache=Cache(tmp_path_factory.mktemp("c")), progress=False)
    train = data.subsample(data.load("glue/sst2", "train"), 16, seed=0)
    theta_a = bench.train(train.select(range(8)), tag="a")
    theta_b = bench.train(train.select(range(8, 16)), tag="b")
    ev = data.subsample(data.load("glue/sst2", "validation"), 24, seed=1)
    return bench, theta_a, theta_b, bench.batches(ev)


def make(bench, theta_a, theta_b, batches):
    score = X.classifier_scorer(bench, batches)
    methods = {"addition": X.Method(pair("paper", theta_a, theta_b), score),
               "negation": X.Method(lambda lam: A.negate(theta_a, "lora", lam), score)}
    curve = pd.DataFrame([{"lam": lam, "method": m, "accuracy": 0.5} for lam in (0, 0.5, 1) for m in methods])
    return X.Explorer(methods, [0.0, 0.25, 0.5, 0.75, 1.0], curve, "accuracy", notebook="00.ipynb")


def test_respond_writes_the_composed_state_in_place_and_scores_it(bench_and_modules):
    bench, theta_a, theta_b, batches = bench_and_modules
    ex = make(*bench_and_modules)
    row = ex.respond(0.25, "addition")
    live = read_state(bench.model)
    assert A.max_abs_diff(live, A.merge(theta_a, theta_b, 0.25, "lora")) == 0.0  # the model carries the merge
    assert row["accuracy"] == bench.evaluate(A.merge(theta_a, theta_b, 0.25, "lora"), batches)["accuracy"]
    assert row["total_ms"] >= row["compose_ms"] >= 0 and row["score_ms"] > 0
    neg = ex.respond(1.0, "negation")
    assert torch.equal(read_state(bench.model)[next(k for k in theta_a if A.role(k) == "lora_A")],
                       -theta_a[next(k for k in theta_a if A.role(k) == "lora_A")])
    assert [r["method"] for r in ex.history] == ["addition", "negation"] and neg["lam"] == 1.0
    assert "λ = 1.00 · negation · accuracy" in ex.describe(neg)


def test_widgets_call_the_callback(bench_and_modules):
    ex = make(*bench_and_modules)
    box = ex.widget()
    assert len(ex.history) == 1  # the first result is shown at once
    slider, menu = box.children[1].children
    slider.value = 0.75
    menu.value = "negation"
    assert [(r["lam"], r["method"]) for r in ex.history] == [(0.5, "addition"), (0.75, "addition"), (0.75, "negation")]
    assert slider.min == 0.0 and slider.max == 1.0 and slider.step == 0.25


def test_static_page_draws_the_precomputed_curve(bench_and_modules, monkeypatch):
    ex = make(*bench_and_modules)
    fig = ex.static_figure()
    assert len([ln for ln in fig.axes[0].lines if len(ln.get_xdata()) == 3]) == 2  # one line per method
    monkeypatch.setenv(X.EXPLORE_ENV, "0")
    assert X.live_default() is False
    ex.show()                    # outside a kernel: figure and the how-to line, no widget
    assert ex.history == []
    monkeypatch.setenv(X.EXPLORE_ENV, "1")
    assert X.live_default() is True
    monkeypatch.delenv(X.EXPLORE_ENV)
    assert X.live_default() is False  # not in a kernel


def test_bad_input_is_named(bench_and_modules):
    ex = make(*bench_and_modules)
    with pytest.raises(ValueError, match="unknown method 'ties'"):
        ex.respond(0.5, "ties")
    with pytest.raises(ValueError, match="outside the slider's range"):
        ex.respond(1.5, "addition")
    with pytest.raises(ValueError, match="lacks columns \\['accuracy'\\]"):
        X.Explorer(ex.methods, [0, 1], pd.DataFrame({"lam": [0], "method": ["x"]}), "accuracy")
    with pytest.raises(ValueError, match="at least one method"):
        X.Explorer({}, [0, 1], ex.curve, "accuracy")


def test_toxicity_scorer_samples_fresh_text_every_call(tmp_path):
    from pemnb.generative import DecoderBench

    bench = DecoderBench(load_profile("smoke"), "lora", cache=Cache(tmp_path), progress=False)
    fake = type("S", (), {"name": "length", "__call__": lambda self, t: [min(1.0, len(x) / 40) for x in t]})()
    score = X.toxicity_scorer(bench, fake, "hello", 3, max_new_tokens=6)
    first, second = score(bench.identity()), score(bench.identity())
    assert list(first["continuations"].columns) == ["continuation", "toxicity (length)"]
    assert 0 <= first["toxicity"] <= 1 and 0 <= first["toxic_frac"] <= 1
    assert list(first["continuations"]["continuation"]) != list(second["continuations"]["continuation"])


def test_menus_compose_what_the_operators_return(bench_and_modules):
    bench, theta_a, theta_b, batches = bench_and_modules
    score = X.classifier_scorer(bench, batches)
    merged = X.merge_methods({"lora": (theta_a, theta_b)}, {"lora": score})
    negated = X.negate_methods({"lora": theta_a}, {"lora": score})
    assert list(merged) == ["lora: θ₁ ⊕ θ₂"] and list(negated) == ["lora: ⊖_λ θ"]
    assert A.max_abs_diff(merged["lora: θ₁ ⊕ θ₂"].compose(0.3), A.merge(theta_a, theta_b, 0.3, "lora")) == 0.0
    assert A.max_abs_diff(negated["lora: ⊖_λ θ"].compose(0.3), A.negate(theta_a, "lora", 0.3)) == 0.0
