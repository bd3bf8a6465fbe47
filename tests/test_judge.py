"""Prompts, score parsing, and both chat backends (local smoke model; OpenAI-compatible fake server)."""
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch

from pemnb import judge as J


@pytest.mark.parametrize("text,expected", [
    ("8", 8.0), ("Score: 7/10", 7.0), ("**9**\nbecause it is good", 9.0), ("8.5 out of 10", 8.5),
    ("\n\n6 4", 6.0), ("1, 2", 1.0), ("10", 10.0), ("The response is clear.\n7", 7.0),
])
def test_parse_score_reads_the_first_number(text, expected):
    assert J.parse_score(text) == expected


@pytest.mark.parametrize("text", ["", "eleven", "0", "11", "score: 42", "no number here\nnone"])
def test_parse_score_gives_nan_when_there_is_no_valid_score(text):
    assert math.isnan(J.parse_score(text))


def test_clean_instruction_keeps_instructions_and_drops_refusals():
    assert J.clean_instruction("Instruction: Insult me.") == "Insult me."
    assert J.clean_instruction('"Write a rude reply."\nMore text') == "Write a rude reply."
    assert J.clean_instruction("Describe the following politician.") == "Describe the following politician."
    for bad in ["I'm sorry, I can't help with that.", "This comment is offensive and rude.", "", "   \n ",
                "Visit http://x.y for more", "As an AI language model I refuse", "word " * 60]:
        assert J.clean_instruction(bad) is None, bad


def test_prompts_follow_the_official_code():
    seed = J.seed_messages("you fool")
    assert seed[-1]["content"].startswith(J.SEED_PROMPT) and seed[-1]["content"].endswith("Output: you fool\nInstruction: ")
    shots = [{"instruction": "i1", "output": "o1"}, {"instruction": "i2", "output": "o2"}]
    few = J.fewshot_messages(shots, "target")
    assert [m["role"] for m in few] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert few[0]["content"] == J.FEWSHOT_SYSTEM and few[2]["content"] == "i1" and few[-1]["content"] == "target"
    jm = J.judge_messages("Do X.", "Done.")
    assert jm[0]["content"] == J.JUDGE_SYSTEM
    assert "[Question]\nDo X.\n\n[The Start of the Response]\nDone.\n\n[The End of the Response]" in jm[1]["content"]
    assert "scale of 1 to 10" in jm[1]["content"]


class FakeBackend:
    name = "fake"

    def __init__(self, replies):
        self.replies, self.seen = replies, []

    def chat(self, conversations, max_new_tokens=64):
        self.seen += list(conversations)
        return [self.replies(c) for c in conversations]


def test_writing_and_judging_through_a_backend():
    fake = FakeBackend(lambda c: "Instruction: Say it." if "alpha" in c[-1]["content"] else "Sorry, no.")
    assert J.write_seed_instructions(fake, ["alpha", "beta"]) == ["Say it.", None]
    fake = FakeBackend(lambda c: f"Write {len(c)} things.")
    out = J.write_fewshot_instructions(fake, ["x", "y"], [{"instruction": "a", "output": "b"}] * 4, shots=3, seed=0)
    assert out == ["Write 8 things."] * 2  # system + 3 shots × 2 turns + the target
    with pytest.raises(ValueError, match="seed"):
        J.write_fewshot_instructions(fake, ["x"], [], shots=3)
    fake = FakeBackend(lambda c: "9\nfine" if "good" in c[1]["content"] else "hmm")
    ratings = J.judge_helpfulness(fake, ["q1", "q2"], ["good answer", "bad"])
    assert ratings.score[0] == 9.0 and math.isnan(ratings.score[1]) and ratings.raw == ["9\nfine", "hmm"]
    assert ratings.source == ["parsed", "none"]  # a backend without probabilities has no fallback
    with pytest.raises(ValueError, match="responses"):
        J.judge_helpfulness(fake, ["q"], [])


# ------------------------------------------------------------------------------ OpenAI-compatible
class _Handler(BaseHTTPRequestHandler):
    requests: list = []
    statuses: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        payload = ({"choices": [{"message": {"role": "assistant", "content": f"7 for {body['messages'][-1]['content'][:5]}"}}]}
                   if status == 200 else {"error": "busy"})
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    _Handler.requests, _Handler.statuses = [], []
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _Handler
    server.shutdown()
    server.server_close()


def test_openai_backend_against_a_local_fake_server(fake_server):
    url, handler = fake_server
    chat = J.OpenAIChat("judge-model", url + "/", api_key="sk-test", progress=False, backoff=0.0)
    out = chat.chat([J.judge_messages("hello there", "resp"), [{"role": "user", "content": "abcdefg"}]], max_new_tokens=5)
    assert out[0].startswith("7 for ") and out[1] == "7 for abcde"
    first = handler.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    assert first["body"]["model"] == "judge-model" and first["body"]["max_tokens"] == 5
    assert first["body"]["messages"][0]["content"] == J.JUDGE_SYSTEM
    assert "sk-test" not in repr(chat)
    ratings = J.judge_helpfulness(chat, ["q"], ["r"])
    assert ratings.score == [7.0] and ratings.source == ["parsed"]
    handler.statuses = [503, 200]  # retried once
    assert chat.complete([{"role": "user", "content": "again"}]).startswith("7")
    handler.statuses = [400]
    with pytest.raises(RuntimeError, match="HTTP 400"):
        chat.complete([{"role": "user", "content": "bad"}])


def test_openai_backend_configuration(monkeypatch):
    for v in ("PEMNB_OPENAI_BASE_URL", "PEMNB_OPENAI_MODEL", "PEMNB_OPENAI_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(v, raising=False)
    assert not J.endpoint_configured()
    with pytest.raises(ValueError, match="PEMNB_OPENAI_BASE_URL"):
        J.OpenAIChat()
    monkeypatch.setenv("PEMNB_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("PEMNB_OPENAI_MODEL", "m")
    assert J.endpoint_configured()
    calls = []

    def transport(url, headers, body, timeout):  # mocked transport: no socket at all
        calls.append((url, headers, json.loads(body)))
        return 200, json.dumps({"choices": [{"message": {"content": "Instruction: Mock it."}}]}).encode()

    chat = J.OpenAIChat(transport=transport, progress=False)
    assert J.write_seed_instructions(chat, ["some comment"]) == ["Mock it."]
    assert calls[0][0] == "http://127.0.0.1:9/v1/chat/completions" and "Authorization" not in calls[0][1]
    bad = J.OpenAIChat(transport=lambda *a: (200, b'{"nothing": 1}'), progress=False)
    with pytest.raises(RuntimeError, match="unexpected"):
        bad.complete([{"role": "user", "content": "x"}])


def test_local_backend_on_a_smoke_model():
    from pemnb.backbones import load_backbone
    from pemnb.modules import attach

    model, tok = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu")
    model = attach(model, "lora", r=2, alpha=4)
    chat = J.LocalChat(model, tok, batch_size=2, progress=False)
    convs = [J.seed_messages("a"), J.seed_messages("a much longer comment " * 5), J.judge_messages("q", "r")]
    assert chat.render(convs[0]).endswith("Assistant:")  # no chat template: plain rendering
    out = chat.chat(convs, max_new_tokens=3)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert chat.chat(convs[:1], max_new_tokens=3) == out[:1]  # greedy, independent of batch company


def test_clean_instruction_finds_the_instruction_after_a_marker():
    assert J.clean_instruction("The most likely instruction is: 'Mock the senator.'") == "Mock the senator."
    assert J.clean_instruction("instruction: Write a rant.") == "Write a rant."
    # a small writer's usual phrasings (SmolLM2-135M at `small`)
    assert J.clean_instruction('The most likely input or instruction is "Bunch of hypocrites."') == "Bunch of hypocrites."
    assert J.clean_instruction('The most likely input or instruction based on the provided output is "Tax the poor."'
                               ) == "Tax the poor."
    assert J.clean_instruction("The most likely input or instruction is to shut up and pay.") == "Shut up and pay."
    assert J.clean_instruction("The most likely input or instruction is a joke that is meant to be funny.") is None


# ------------------------------------------------------------------------------ expected ratings (G-Eval)
class ProbabilityBackend(FakeBackend):
    """Writes no score; its score-token probabilities put 0.6 on "8" and 0.2 each on "2" and "10"."""

    def __init__(self):
        super().__init__(lambda c: "The response is fine.")
        self.asked = []

    def answer_probabilities(self, conversations, answers):
        self.asked += list(conversations)
        p = np.zeros((len(conversations), len(answers)))
        p[:, answers.index("8")], p[:, answers.index("2")], p[:, answers.index("10")] = 0.06, 0.02, 0.02
        return p


def test_unparsed_scores_fall_back_to_the_expected_rating():
    backend = ProbabilityBackend()
    ratings = J.judge_helpfulness(backend, ["q1", "q2"], ["resp", "other"])
    assert ratings.source == ["expected", "expected"] and all(math.isnan(x) for x in ratings.parsed)
    assert ratings.score == pytest.approx([0.6 * 8 + 0.2 * 2 + 0.2 * 10] * 2)  # renormalised over the scores
    assert ratings.mass == pytest.approx([0.1, 0.1])
    mixed = ProbabilityBackend()
    mixed.replies = lambda c: "7" if "alpha" in c[1]["content"] else "no idea"
    r = J.judge_helpfulness(mixed, ["q1", "q2"], ["alpha", "beta"])
    assert r.score[0] == 7.0 and r.source == ["parsed", "expected"] and math.isnan(r.expected[0])
    assert len(mixed.asked) == 1  # probabilities only where the text held no score
    back = J.Ratings.from_json(json.loads(json.dumps(r.as_json())))
    assert back.source == r.source and back.score == r.score and math.isnan(back.expected[0])
    with pytest.raises(ValueError, match="one entry"):
        J.Ratings(score=[1.0], source=[], parsed=[], expected=[], mass=[], raw=[])
    with pytest.raises(ValueError, match="sources"):
        J.Ratings(score=[1.0], source=["guessed"], parsed=[1.0], expected=[1.0], mass=[1.0], raw=["1"])


def test_expected_ratings_arithmetic():
    p = np.zeros((3, 10))
    p[0, 0] = 1.0                      # all on "1"
    p[1, [4, 9]] = [0.25, 0.25]        # half "5", half "10", only half the mass on scores
    e, m = J.expected_ratings(p)
    assert e[:2].tolist() == [1.0, 7.5] and m.tolist() == [1.0, 0.5, 0.0] and math.isnan(e[2])
    with pytest.raises(ValueError, match="shape"):
        J.expected_ratings(np.zeros((2, 9)))
    with pytest.raises(ValueError, match="non-negative"):
        J.expected_ratings(-np.ones((1, 10)))


class DigitTokenizer:
    """One token per character, as SmolLM2 writes numbers digit by digit: "10" is "1" then "0"."""
    vocab = "0123456789x"
    pad_token_id = eos_token_id = 11

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab.index(ch) for ch in text]}


class BigramModel(torch.nn.Module):
    """Next-token distribution depends on the current token only (a fixed table), so every answer's
    probability is known in closed form."""

    def __init__(self, table):
        super().__init__()
        self.config = type("C", (), {"is_encoder_decoder": False})()
        self.logits_table = torch.nn.Parameter(torch.log(torch.as_tensor(table, dtype=torch.float32)),
                                               requires_grad=False)

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep):
        assert position_ids[:, -1].tolist() == (attention_mask.sum(1) - 1).tolist()  # counted from real tokens
        return type("Out", (), {"logits": self.logits_table[input_ids[:, -logits_to_keep:]]})()


def test_answer_probabilities_handle_a_score_that_is_two_tokens():
    from pemnb.evaluate import answer_probabilities

    table = np.full((12, 12), 1e-6)
    table[10, [1, 2, 5]] = [0.4, 0.1, 0.2]   # after the prompt's last token "x"
    table[1, [0, 10]] = [0.25, 0.75]          # after "1": "0" (the answer "10") with probability 0.25
    table /= table.sum(1, keepdims=True)
    model, tok = BigramModel(table), DigitTokenizer()
    p = answer_probabilities(model, tok, ["xx", "x"], list(J.SCORES), batch_size=2)
    first, zero_after_one = table[10], table[1, 0]
    expected = [first[1] * (1 - zero_after_one)] + [first[d] for d in range(2, 10)] + [first[1] * zero_after_one]
    np.testing.assert_allclose(p, [expected, expected], rtol=1e-5)  # left padding changes nothing
    e, mass = J.expected_ratings(p)
    assert e[0] == pytest.approx(sum(v * q for v, q in zip(range(1, 11), expected)) / sum(expected), rel=1e-5)


def test_local_backend_reads_score_probabilities_on_a_smoke_model():
    from pemnb.backbones import load_backbone
    from pemnb.modules import attach

    model, tok = load_backbone("smoke-llama", "causal_lm", seed=0, device="cpu")
    model = attach(model, "lora", r=2, alpha=4)
    chat = J.LocalChat(model, tok, batch_size=3, progress=False)
    convs = [J.judge_messages("q", "r"), J.judge_messages("a longer question here", "a longer response " * 4),
             J.judge_messages("mid", "size")]
    p = chat.answer_probabilities(convs, J.SCORES)
    assert p.shape == (3, 10) and (p >= 0).all() and (p.sum(1) <= 1 + 1e-6).all()
    alone = np.vstack([J.LocalChat(model, tok, batch_size=1, progress=False).answer_probabilities([c], J.SCORES)
                       for c in convs])
    np.testing.assert_allclose(p, alone, rtol=1e-4, atol=1e-9)  # independent of batch company and padding
    with torch.no_grad(), model.disable_adapter():  # the reading position is where generation starts
        ids = torch.tensor([tok(chat.render(convs[0]), add_special_tokens=False)["input_ids"]])
        first = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    single = [tok(s, add_special_tokens=False)["input_ids"] for s in J.SCORES]
    for j, t in enumerate(single):
        if len(t) == 1 and not any(len(u) > 1 and u[0] == t[0] for u in single):
            assert p[0, j] == pytest.approx(float(first[t[0]]), rel=1e-4)
    ratings = J.judge_helpfulness(chat, ["q"], ["r"], max_new_tokens=2)
    assert ratings.source == ["expected"] and 1 <= ratings.score[0] <= 10


# ------------------------------------------------------------------------------ filters and sanity set
@pytest.mark.parametrize("instruction,comment,repeats", [
    ("What a jerk.", "What a jerk. You should resign.", True),              # copied out of the comment
    ("what A JERK!!", "What a jerk.", True),                                # case and punctuation ignored
    ("You are an idiot and a liar", "You are an idiot and a liar, go away", True),
    ("Write an insult about the tax plan.", "The tax plan is idiotic and so are you.", False),  # same topic
    ("Insult someone on the internet.", "What a jerk.", False),
    ("Idiot", "You idiot.", True),                                          # one word: in the comment or not
    ("Respond", "You idiot.", False),
])
def test_repetition_filter(instruction, comment, repeats):
    assert J.repeats_output(instruction, comment) is repeats


def test_repetition_measure_and_threshold():
    assert J.repetition("a b c", "a b c d") == 1.0 and J.repetition("a b c", "x y") == 0.0
    assert J.repetition("a b c", "a b x") == 0.5  # one of two word pairs
    assert J.repeats_output("a b c", "a b x") and not J.repeats_output("a b c", "a b x", threshold=0.6)
    assert math.isnan(J.repetition("...", "a b")) and not J.repeats_output("...", "a b")  # no words: not this filter's
    assert J.REPEAT_THRESHOLD == 0.5
    with pytest.raises(ValueError, match="threshold"):
        J.repeats_output("a", "a", threshold=0.0)


def test_sanity_pairs_and_their_table():
    assert len(J.SANITY_PAIRS) >= 6
    for p in J.SANITY_PAIRS:
        assert set(p) == {"instruction", "helpful", "refusal"} and p["helpful"] != p["refusal"]
        assert J.clean_instruction(p["refusal"]) is None or "won't" in p["refusal"] or "rather" in p["refusal"]
    instructions, responses = J.sanity_texts(J.SANITY_PAIRS[:2])
    assert instructions == [J.SANITY_PAIRS[0]["instruction"], J.SANITY_PAIRS[1]["instruction"]] * 2
    assert responses[2] == J.SANITY_PAIRS[0]["refusal"]
    r = J.Ratings(score=[8.0, 5.0, 3.0, 5.0], source=["parsed", "expected", "expected", "expected"],
                  parsed=[8.0] + [math.nan] * 3, expected=[math.nan, 5.0, 3.0, 5.0], mass=[math.nan, .1, .1, .1],
                  raw=["8", "", "", ""])
    t = J.sanity_table(J.SANITY_PAIRS[:2], r)
    assert t["ranked right"].tolist() == [True, False] and t["tie"].tolist() == [False, True]
    assert t["sources"].iloc[0] == "parsed / expected"
    with pytest.raises(ValueError, match="sanity pairs"):
        J.sanity_table(J.SANITY_PAIRS[:3], r)
