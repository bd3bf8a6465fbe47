"""The operator diagram: every result glyph is what pemnb.arithmetic returns, and the figure renders."""
import io

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402

from pemnb import arithmetic as A  # noqa: E402
from pemnb import diagram  # noqa: E402


@pytest.mark.parametrize("kind", A.KINDS)
def test_panels_hold_what_the_operators_return(kind):
    t1, t2, t3 = diagram.toy_modules(kind)
    add = diagram.panel("addition", kind, 0.25)
    assert A.max_abs_diff(add.result, A.merge(t1, t2, 0.25, kind)) == 0.0
    neg = diagram.panel("negation", kind, 0.6)
    assert A.max_abs_diff(neg.result, A.negate(t1, kind, 0.6)) == 0.0
    ana = diagram.panel("analogy", kind, 1.0)  # λ = 1: the source classifier itself
    assert A.max_abs_diff(ana.result, t1) < 1e-7


def test_negation_glyphs_show_the_reversed_update():
    lora = diagram.panel("negation", "lora", 1.0)
    dW, dW_neg = A.delta_weights(lora.inputs[0], 1.0), A.delta_weights(lora.result, 1.0)
    assert torch.equal(dW_neg["layer"], -dW["layer"])
    ia3 = diagram.panel("negation", "ia3", 1.0)
    assert torch.allclose(ia3.result["layer.ia3_l"] - 1, -(ia3.inputs[0]["layer.ia3_l"] - 1))


def test_figure_has_one_titled_panel_per_operator_and_kind_and_renders():
    fig = diagram.operator_diagram()
    gids = [ax.get_gid() for ax in fig.axes]
    assert gids == [f"{op}/{k}" for op in diagram.OPERATORS for k in A.KINDS]
    assert [ax.get_title() for ax in fig.axes[:3]] == ["LoRA", "(IA)$^3$", "full fine-tune"]
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert set(diagram.EQUATIONS.values()) <= texts
    fig.savefig(io.BytesIO(), format="png")  # every mathtext equation parses


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown operator 'scale'"):
        diagram.panel("scale", "lora")
    with pytest.raises(ValueError, match="unknown module kind 'adapter'"):
        diagram.operator_diagram(kinds=("adapter",))
