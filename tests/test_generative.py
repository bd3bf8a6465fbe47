"""Decoder-side data shaping and the DecoderBench on tiny models."""
import numpy as np
import pytest
import torch

from pemnb import arithmetic as A
from pemnb.backbones import smoke_tokenizer
from pemnb.cache import Cache, fingerprint
from pemnb.generative import (DecoderBench, chunk_pairs, lm_examples, pair_examples,
                              prompt_answer_examples)
from pemnb.profiles import load_profile


def test_prompt_answer_examples_score_only_the_answer():
    tok = smoke_tokenizer()
    ex = prompt_answer_examples(tok, ["does it rain ?"], ["yes"], max_length=32)[0]
    yes = tok("yes", add_special_tokens=False)["input_ids"]
    prompt_ids = tok("does it rain ?")["input_ids"]  # with special tokens, as at evaluation
    n_prompt = len(prompt_ids)
    assert ex["input_ids"][:n_prompt] == prompt_ids
    assert ex["labels"][:n_prompt] == [-100] * n_prompt
    assert ex["labels"][n_prompt:] == yes + [tok.eos_token_id]
    assert ex["input_ids"][n_prompt:] == yes + [tok.eos_token_id]
    short = prompt_answer_examples(tok, ["word " * 100], ["yes"], max_length=16)[0]
    assert len(short["input_ids"]) == 16 and short["labels"][-2:] == yes + [tok.eos_token_id]
    t5 = prompt_answer_examples(tok, ["does it rain ?"], ["yes"], 32, encoder_decoder=True)[0]
    assert t5["labels"] == yes + [tok.eos_token_id] and -100 not in t5["labels"]
    with pytest.raises(ValueError, match="prompts"):
        prompt_answer_examples(tok, ["a", "b"], ["x"], 8)


def test_chunk_pairs_follow_the_text():
    tok = smoke_tokenizer()
    texts = [" ".join(f"w{i}" for i in range(40)), "the end of the text"]
    stream = sum((tok(t, add_special_tokens=False)["input_ids"] for t in texts), [])
    pairs = chunk_pairs(tok, texts, chunk=8)
    assert len(pairs) == len(stream) // 8 - 1
    for i, (src, tgt) in enumerate(pairs):
        assert src == stream[8 * i:8 * i + 8] and tgt == stream[8 * i + 8:8 * i + 16]
    ex = pair_examples(pairs[:1])[0]
    assert ex["labels"] == [-100] * 8 + pairs[0][1]
    with pytest.raises(ValueError):
        chunk_pairs(tok, texts, chunk=0)


def test_lm_examples_and_fingerprints():
    tok = smoke_tokenizer()
    ex = lm_examples(tok, ["hello there", "", "general kenobi"], max_length=8)
    assert len(ex) == 2 and ex[0]["labels"] == ex[0]["input_ids"]
    assert fingerprint(ex) == fingerprint([dict(e) for e in ex])
    assert fingerprint(ex) != fingerprint(ex[:1])


@pytest.mark.parametrize("backbone", ["smoke-llama", "smoke-t5"])
def test_decoder_bench_trains_caches_and_scores(tmp_path, backbone):
    profile = load_profile("smoke", steps=6)
    bench = DecoderBench(profile, "lora", backbone=backbone, cache=Cache(tmp_path), progress=False)
    prompts = [f"is {i} even ? answer yes or no ." for i in range(16)]
    answers = ["yes" if i % 2 == 0 else "no" for i in range(16)]
    ex = bench.qa_examples(prompts, answers)
    theta = bench.train(ex, tag="parity")
    again = bench.train(ex, tag="parity")  # served from the cache
    assert all(torch.equal(theta[k], again[k]) for k in theta)
    scores = bench.choice_scores(theta, prompts, ["yes", "no"])
    assert scores.shape == (16, 2) and np.isfinite(scores).all()
    # a module plus its negation, merged at 0.5, scores exactly like the identity module
    s_id = bench.choice_scores(bench.identity(), prompts, ["yes", "no"])
    s_mix = bench.choice_scores(A.merge(theta, A.negate(theta, "lora"), 0.5, "lora"), prompts, ["yes", "no"])
    np.testing.assert_allclose(s_mix, s_id, atol=1e-5)
