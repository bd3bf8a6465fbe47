"""Metrics, answer scoring vs constrained generation, perplexity, toxicity scorers."""
import math

import numpy as np
import pytest
import torch

from pemnb import evaluate as E
from pemnb.backbones import load_backbone


def test_glue_metrics_against_hand_computed_values():
    y, p = [1, 0, 1, 1, 0, 0], [1, 0, 0, 1, 1, 0]
    assert E.glue_metrics("glue/sst2", p, y) == {"accuracy": pytest.approx(4 / 6)}
    m = E.glue_metrics("mrpc", p, y)
    assert m["f1"] == pytest.approx(2 / 3)  # tp=2, fp=1, fn=1
    # MCC = (tp*tn - fp*fn)/sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (4-1)/9
    assert E.glue_metrics("cola", p, y)["mcc"] == pytest.approx(3 / 9)
    s = E.glue_metrics("stsb", [0.1, 0.4, 0.35, 0.8], [0.0, 1.0, 2.0, 3.0])
    assert s["pearson"] == pytest.approx(np.corrcoef([0.1, 0.4, 0.35, 0.8], [0, 1, 2, 3])[0, 1])
    assert s["spearman"] == pytest.approx(0.8)
    assert E.headline_metric("glue/cola") == "mcc" and E.headline_metric("rte") == "accuracy"
    with pytest.raises(ValueError, match="predictions"):
        E.glue_metrics("rte", [1, 0], [1])


def test_length_buckets_cover_every_index_once():
    b = E.length_buckets([5, 1, 3, 9, 2], 2)
    assert sorted(i for x in b for i in x) == list(range(5))
    assert b[0] == [1, 4]


@pytest.mark.parametrize("name", ["smoke-llama", "smoke-t5"])
def test_one_pass_scoring_agrees_with_constrained_beam_search(name):
    task = "seq2seq" if name == "smoke-t5" else "causal_lm"
    model, tok = load_backbone(name, task, seed=0, device="cpu")
    prompts = [f"does sentence {i} imply sentence {i + 1} ? please answer yes or no ." for i in range(12)]
    choices = ["yes", "no", "maybe"]
    scores = E.score_choices(model, tok, prompts, choices)
    assert scores.shape == (12, 3) and np.all(scores <= 0)
    generated = E.constrained_generate(model, tok, prompts, choices, num_beams=5)
    assert generated == scores.argmax(1).tolist()


def test_multi_token_scoring_is_length_normalised():
    model, tok = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu")
    s = E.score_choices(model, tok, ["the answer is"], ["positive", "not at all negative"])
    assert s.shape == (1, 2) and np.isfinite(s).all()


def test_perplexity_single_window_equals_exp_loss_and_stride_is_checked():
    model, tok = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu")
    text = "the quick brown fox jumps over the lazy dog " * 3
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        direct = math.exp(float(model(input_ids=ids, labels=ids).loss))
    assert E.perplexity(model, tok, text, max_length=256, stride=256) == pytest.approx(direct, rel=1e-5)
    windowed = E.perplexity(model, tok, text, max_length=8, stride=4)
    assert windowed > 1 and math.isfinite(windowed)
    with pytest.raises(ValueError, match="stride"):
        E.perplexity(model, tok, text, max_length=8, stride=16)


def test_sampling_is_seeded_batched_and_excludes_the_prompt():
    model, tok = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu")
    prompt = "I don't care if this is controversial"
    kw = dict(max_new_tokens=6, batch_size=3, progress=False)
    one = E.sample(model, tok, prompt, 5, seed=1, **kw)
    assert len(one) == 5 and one == E.sample(model, tok, prompt, 5, seed=1, **kw)
    assert one != E.sample(model, tok, prompt, 5, seed=2, **kw)
    assert not any("controversial" in t for t in one)  # the random model never says it; the prompt is cut
    # batch b is seeded with seed + b: the second batch of a run is the first batch of a run at seed + 1
    assert E.sample(model, tok, prompt, 6, seed=1, **kw)[3:] == E.sample(model, tok, prompt, 3, seed=2, **kw)
    with pytest.raises(ValueError, match="positive"):
        E.sample(model, tok, prompt, 0)


def test_window_nlls_add_up_to_the_perplexity():
    model, tok = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu")
    text = "the quick brown fox jumps over the lazy dog " * 6
    nlls, counts = E.window_nlls(model, tok, text, max_length=16, stride=8)
    n = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"].shape[1]
    assert len(nlls) == len(counts) > 2 and sum(counts) == n - 1  # every token but the first scored once
    assert E.perplexity(model, tok, text, max_length=16, stride=8) == math.exp(sum(nlls) / sum(counts))
    assert E.perplexity_of([2.0, 4.0], [1, 3]) == pytest.approx(math.exp(1.5))
    with pytest.raises(ValueError, match="no scored tokens"):
        E.perplexity_of([], [])


def test_profanity_scorer_ranks_an_insult_above_a_greeting():
    scorer = E.load_toxicity_scorer("profanity")
    s = scorer(["you are a stupid idiot", "have a lovely day"])
    assert scorer.name == "alt-profanity-check" and s[0] > 0.5 > s[1]


def test_fallback_is_loud_and_named(monkeypatch, capsys):
    def broken():
        raise OSError("no network")

    monkeypatch.setattr(E, "_detoxify", broken)
    with pytest.warns(RuntimeWarning, match="FALLING BACK"):
        scorer = E.load_toxicity_scorer()
    assert scorer.name == "alt-profanity-check"
    assert "FALLING BACK" in capsys.readouterr().out
    with pytest.raises(OSError):
        E.load_toxicity_scorer("detoxify")


def _peaky(model, scale=30.0):
    """The smoke model with its output layer scaled up: sharp next-token distributions, so whether the
    model would stop after an answer matters, as it does for a real model."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    return model


def _reluctant_to_stop(model, tok, answer, strength=2.0):
    """The smoke model made less likely to end its output after `answer` (its EOS logit pushed away from
    that answer's embedding; output layer untied first): the situation of zero-shot SmolLM2, which would
    rather go on after " yes", built into a tiny model."""
    ids = tok(answer, add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        row = head.weight[ids].clone()
        head.weight[tok.eos_token_id] -= strength * row / row.norm()
    return model


PROMPTS = [f"does sentence {i} imply sentence {i * 7 % 13} ? please answer {w} ." for i in range(24)
           for w in ("yes or no", "now")]


@pytest.mark.parametrize("name", ["smoke-llama", "smoke-t5"])
def test_constrained_scores_rank_as_constrained_beam_search_and_the_bare_answer_does_not(name):
    task = "seq2seq" if name == "smoke-t5" else "causal_lm"
    model, tok = load_backbone(name, task, seed=0, device="cpu")
    choices = ["yes", "no", "maybe"]
    favourite = choices[int(np.bincount(E.score_choices(model, tok, PROMPTS, choices).argmax(1)).argmax())]
    model = _reluctant_to_stop(model, tok, favourite)
    assert all(len(tok(c, add_special_tokens=False)["input_ids"]) == 1 for c in choices)
    scores = E.constrained_scores(model, tok, PROMPTS, choices, batch_size=8)
    assert scores.shape == (len(PROMPTS), 3) and np.all(scores <= 0)
    for beams in (3, 5):
        assert E.constrained_generate(model, tok, PROMPTS, choices, num_beams=beams) == scores.argmax(1).tolist()
    # the bare answer's score (what the chapters used to sweep with) still prefers `favourite` and so
    # picks differently on some rows
    bare = E.score_choices(model, tok, PROMPTS, choices).argmax(1)
    assert (bare != scores.argmax(1)).mean() > 0.05


def test_constrained_scores_tree_pass_equals_one_pass_per_answer():
    model, tok = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu")
    choices = ["yes", "no", "maybe"]
    fast = E.constrained_scores(model, tok, PROMPTS[:10], choices, batch_size=4)
    ids = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in choices]
    slow = np.zeros_like(fast)
    tok.padding_side = "left"
    for i, p in enumerate(PROMPTS[:10]):  # one prompt at a time: no padding at all
        enc = tok([p], return_tensors="pt")
        slow[i] = [float(E._target_logprob(model, enc, t)) / 2 for t in ids]
    np.testing.assert_allclose(fast, slow, atol=1e-5)


def test_constrained_scores_normalise_answers_of_different_lengths_as_beam_search_does():
    model, tok = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu")
    model = _peaky(model, 10.0)
    choices = ["yes", "not at all", "maybe so"]
    lengths = [len(tok(c, add_special_tokens=False)["input_ids"]) for c in choices]
    assert len(set(lengths)) > 1, lengths
    scores = E.constrained_scores(model, tok, PROMPTS, choices, batch_size=8)
    assert E.constrained_generate(model, tok, PROMPTS, choices, num_beams=5) == scores.argmax(1).tolist()
    with pytest.raises(ValueError, match="tokenises to nothing"):
        E.constrained_scores(model, tok, PROMPTS[:2], ["yes", ""])


@pytest.mark.parametrize("name", ["smoke-llama", "smoke-t5"])
def test_constrained_scores_equal_the_unbatched_reference_in_multitask(shared_data, name):
    from pemnb import multitask as MT

    task = "seq2seq" if name == "smoke-t5" else "causal_lm"
    model, tok = load_backbone(name, task, seed=0, device="cpu")
    choices = MT.PromptFormat(encoder_decoder=name == "smoke-t5").choices("mnli")
    reference = MT.answer_eos_scores(model, tok, PROMPTS[:12], choices)
    np.testing.assert_allclose(E.constrained_scores(model, tok, PROMPTS[:12], choices, batch_size=5) * 2,
                               reference, atol=1e-4)
