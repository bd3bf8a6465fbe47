"""pemnb.operators (chapter 00): intervals and the words chosen from them, on made-up predictions."""
import numpy as np

from pemnb import operators

LABELS = np.array([0, 1] * 100)
RIGHT = LABELS.tolist()
WRONG = (1 - LABELS).tolist()
COIN = [0] * 200  # half right


def row(module, kind, pred, **extra):
    return {"module": module, "kind": kind, "predictions": pred,
            "accuracy": float(np.mean(np.asarray(pred) == LABELS)), **extra}


def test_states_words_follow_the_intervals():
    rows = [row(operators.IDENTITY, "lora", COIN), row("trained θ", "lora", RIGHT), row("negated ⊖θ", "lora", WRONG),
            row("ablation (−every parameter)", "lora", RIGHT)]
    states = operators.state_intervals(rows, LABELS)
    trained = states[states["module"] == "trained θ"].iloc[0]
    assert trained["accuracy"] == 1.0 and trained["accuracy_diff_real"]
    add = [row("", "lora", COIN, lam=0.0), row("", "lora", RIGHT, lam=0.5), row("", "lora", COIN, lam=1.0)]
    addition = operators.addition_summary(add, LABELS)
    facts = operators.facts(states, addition, [{"relative ΔW error": 0.24}])
    assert facts["lora_trained_change"] == "lifts accuracy by 50.0 points"
    assert facts["lora_negated_vs_chance"] == "falls below"
    assert facts["lora_merge_vs_half"] == "beats the better half module by 50.0 points"
    assert facts["lora_best_inside"] == "inside the sweep" and facts["lora_merge_best_lam"] == 0.5
    assert facts["cross_grade"] == "sizeable"  # 24% is not "small"


def test_a_merge_no_better_than_a_half_is_not_called_better():
    add = [row("", "ia3", RIGHT, lam=0.0), row("", "ia3", RIGHT[:100] + COIN[:100], lam=0.5), row("", "ia3", COIN, lam=1.0)]
    summary = operators.addition_summary(add, LABELS).iloc[0]
    assert summary["better half is λ"] == 0.0 and summary["best λ"] == 0.0 and not summary["best inside (0, 1)"]
    phrases = operators.against_best_member(
        [row("m", "ia3", COIN), row("a", "ia3", RIGHT), row("b", "ia3", COIN)], LABELS, "m", ["a", "b"])
    assert phrases["ia3"] == "falls 50.0 points below its best member (a)"
