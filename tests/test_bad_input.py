"""Bad arithmetic input is refused with an error that names the problem (the key, the layer, the λ);
λ outside [0, 1] stays allowed (extrapolation)."""
import math

import pytest
import torch

from pemnb import arithmetic as A
from pemnb import merge_methods as M


def lora(seed=0, d=5, r=2, head=True):
    g = torch.Generator().manual_seed(seed)
    s = {f"enc.{i}.query.{f}.weight": torch.randn(*((r, d) if f == "lora_A" else (d, r)), generator=g)
         for i in range(2) for f in ("lora_A", "lora_B")}
    if head:
        s["classifier.weight"] = torch.randn(2, d, generator=g)
    return s


def ia3(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"enc.0.key.ia3_l": 1 + 0.3 * torch.randn(5, 1, generator=g)}


def mixed():
    return {**lora(head=False), **ia3()}


def unpaired():
    s = lora()
    del s["enc.1.query.lora_B.weight"]
    return s


def rank_mismatch():
    s = lora()
    s["enc.0.query.lora_B.weight"] = torch.randn(5, 3)  # A has rank 2
    return s


BAD_LAM = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("lam", BAD_LAM)
@pytest.mark.parametrize("op", ["negate", "ablate", "merge", "analogy"])
def test_non_finite_lambda_is_refused_naming_it(op, lam):
    s, t, u = lora(1), lora(2), lora(3)
    call = {"negate": lambda: A.negate(s, "lora", lam), "ablate": lambda: A.ablate(s, "lora", lam),
            "merge": lambda: A.merge(s, t, lam, "lora"), "analogy": lambda: A.analogy(s, t, u, lam, "lora")}[op]
    with pytest.raises(ValueError, match=r"λ must be finite, got lam=(nan|inf|-inf)"):
        call()


def test_a_non_number_lambda_is_a_type_error():
    with pytest.raises(TypeError, match="λ must be a number"):
        A.negate(lora(), "lora", "half")


@pytest.mark.parametrize("lam", [-0.5, 1.5, 3.0])
def test_lambda_outside_the_unit_interval_extrapolates(lam):
    s, t = lora(1), lora(2)
    out = A.merge(s, t, lam, "lora")
    for k in s:
        torch.testing.assert_close(out[k], lam * s[k] + (1 - lam) * t[k])
    neg = A.negate(ia3(), "ia3", lam)
    torch.testing.assert_close(neg["enc.0.key.ia3_l"], 1 - lam * (ia3()["enc.0.key.ia3_l"] - 1))


@pytest.mark.parametrize("weights", [[1.0, math.nan], [math.inf, 0.0]])
def test_non_finite_weights_are_refused_by_every_entry_point(weights):
    states = [lora(1), lora(2)]
    for call in (lambda: A.add(states, weights, "lora"),
                 *[lambda m=m: M.compose(m, states, weights, **({} if M.METHODS[m].returns == "lora" or m == "cat"
                                                                 else {"scaling": 2.0}))
                   for m in M.METHODS if m not in ("svd",)],
                 lambda: M.svd(states, weights, scaling=2.0)):
        with pytest.raises(ValueError, match="weights must be finite"):
            call()


@pytest.mark.parametrize("call", [
    lambda: A.negate(mixed(), "lora"), lambda: A.negate(mixed(), "ia3"), lambda: A.infer_kind(mixed()) and
    A.check_kind(mixed(), A.infer_kind(mixed())), lambda: A.merge(mixed(), mixed(), 0.5, "lora"),
    lambda: M.cat([mixed(), mixed()], [1, 1]), lambda: M.task_arith([mixed()], [1.0], scaling=1.0)])
def test_a_state_mixing_lora_and_ia3_keys_is_refused(call):
    with pytest.raises(ValueError, match=r"mixes LoRA and \(IA\)³ keys \('enc\.0\.query\.lora_A\.weight' "
                                         r"and 'enc\.0\.key\.ia3_l'\)"):
        call()


@pytest.mark.parametrize("call", [
    lambda: A.negate(unpaired(), "lora"), lambda: A.merge(unpaired(), unpaired(), 0.5, "lora"),
    lambda: A.delta_weights(unpaired(), 1.0), lambda: M.compose("paper", [unpaired(), unpaired()], [1, 1]),
    lambda: M.ties([unpaired()], [1.0], scaling=1.0), lambda: M.rank_of(unpaired())])
def test_unpaired_lora_factors_are_refused_naming_the_layer(call):
    with pytest.raises(ValueError, match=r"unpaired LoRA factors: \['enc\.1\.query'\]"):
        call()


@pytest.mark.parametrize("call", [
    lambda: A.negate(rank_mismatch(), "lora"), lambda: A.merge(rank_mismatch(), rank_mismatch(), 0.5, "lora"),
    lambda: A.delta_weights(rank_mismatch(), 1.0), lambda: M.cat([rank_mismatch()], [1.0]),
    lambda: M.dare([rank_mismatch()], [1.0], scaling=1.0)])
def test_a_rank_mismatch_inside_a_module_is_refused_naming_the_layer(call):
    with pytest.raises(ValueError, match=r"enc\.0\.query: rank mismatch inside the module: lora_A has shape "
                                         r"\(2, 5\) \(rank 2\), lora_B has shape \(5, 3\) \(rank 3\)"):
        call()


@pytest.mark.parametrize("call", [
    lambda: A.add(lora(), [1.0], "lora"),
    lambda: A.add({"a": lora(1), "b": lora(2)}, [0.5, 0.5], "lora"),
    lambda: A.check_compatible(lora(), "lora"),
    lambda: M.compose("paper", {"a": lora(1), "b": lora(2)}, [0.5, 0.5]),
    lambda: M.compose("task_arith", lora(), [1.0], scaling=1.0),
    lambda: M.svd({"a": lora(1)}, [1.0], scaling=1.0)])
def test_a_dict_where_a_list_of_states_is_expected_is_a_type_error(call):
    with pytest.raises(TypeError, match=r"(expected a list of module states, got a dict|a dict passed where a "
                                        r"list of states is expected).*\[state\]"):
        call()


def test_weights_that_are_not_a_list_of_numbers_are_a_type_error():
    states = [lora(1), lora(2)]
    with pytest.raises(TypeError, match="weights must be a list of numbers, one per module, got dict"):
        A.add(states, {"a": 0.5, "b": 0.5}, "lora")
    with pytest.raises(TypeError, match="got float"):
        M.cat(states, 0.5)
    with pytest.raises(TypeError, match="weights must be numbers"):
        A.add(states, ["x", 1.0], "lora")


def test_a_list_element_that_is_not_a_state_is_named():
    with pytest.raises(TypeError, match="module 1: a module state is a dict of tensors, got list"):
        A.add([lora(1), [lora(2)]], [0.5, 0.5], "lora")
