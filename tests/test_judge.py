"""Prompts, score parsing, and both chat backends (local smoke model; OpenAI-compatible fake server)."""
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

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
    scores, raw = J.judge_helpfulness(fake, ["q1", "q2"], ["good answer", "bad"])
    assert scores[0] == 9.0 and math.isnan(scores[1]) and raw == ["9\nfine", "hmm"]
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
    scores, _ = J.judge_helpfulness(chat, ["q"], ["r"])
    assert scores == [7.0]
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
