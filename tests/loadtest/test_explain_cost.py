"""loadtest.explain_cost: the payloads it builds, and what it measures against a stand-in server."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from loadtest.explain_cost import measure, texts_of, write_markdown
from models.text import sentiment_tokens

SENTENCES = ["a fine film .", "it does n't work at all , but the actors try hard .",
             "one two three four five six seven", "eight nine ten eleven twelve !"]


def test_texts_have_exactly_the_asked_tokens_whole_sentences_first():
    assert texts_of(SENTENCES, 4, 1) == ["a fine film ."]
    joined = texts_of(SENTENCES, 12, 2)  # no sentence has 12 tokens: consecutive ones, cut
    assert [len(sentiment_tokens(t)) for t in joined] == [12, 12]
    assert joined[0].startswith("a fine film . it does n't")
    with pytest.raises(ValueError, match="of 3 texts of 12 tokens"):
        texts_of(SENTENCES, 12, 3)


@pytest.fixture
def stand_in():
    """A /sentiment that answers like the service (trajectory only with explain) and records the
    order of the requests; status 500 for a text "fail"."""
    seen: list[bool] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as measure() uses one connection

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body["explain"])
            status = 500 if body["texts"] == ["fail"] else 200
            extra = {"trajectory": [0.5]} if body["explain"] else {}
            answer = json.dumps([{"label": "positive", **extra} for _ in body["texts"]]).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()
    server.server_close()


def test_each_round_sends_both_variants_in_alternating_order(stand_in, tmp_path):
    url, seen = stand_in
    measured = measure(url, ["a fine film .", "so so ."], rounds=4)
    # warm-up (plain, explain), then ABBA
    assert seen == [False, True, False, True, True, False, False, True, True, False]
    assert len(measured["rounds"]) == 4 and measured["texts"] == 2 and measured["tokens_each"] == 4
    assert measured["ratio_of_medians"] == pytest.approx(
        measured["explain_ms_median"] / measured["plain_ms_median"])
    report = {"command": "python -m loadtest.explain_cost --url U", "finished": "now", "server": url,
              "rounds": 4, "load_average": [5.5, 6.3], "payloads": {"2 texts of 4 tokens": measured}}
    write_markdown(report, tmp_path / "cost.md")
    text = (tmp_path / "cost.md").read_text()
    assert "| 2 texts of 4 tokens |" in text and text.count("\n| 4 |") == 1
    assert "load average was 5.5 before and 6.3 after" in text


def test_an_error_answer_stops_the_measurement(stand_in):
    url, _ = stand_in
    with pytest.raises(RuntimeError, match="answered 500"):
        measure(url, ["fail"], rounds=1)
