"""Generation sessions over real HTTP: a state continues exactly on either of two workers, beside
other requests, and after a restart; a bad state is a 4xx naming `state` (service.sessions)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from loadtest.server import import_models, serving
from models.generator import CharGenerator
from service.sessions import KEY_FILE, Sessions, key_from

from support.server import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.server]
WORKERS = {"RNNSERVE_WORKERS": "2"}


@pytest.fixture(scope="module")
def home(tiny_shipped_dir, tmp_path_factory) -> Path:
    return import_models(tiny_shipped_dir, tmp_path_factory.mktemp("sessions") / "bentoml_home")


@pytest.fixture(scope="module")
def server(home) -> Iterator[str]:
    with serving(REPO_ROOT, home, home.parent / "server.log", WORKERS) as running:
        yield running.url


def post(url: str, body: dict) -> httpx.Response:
    """On a new connection each time, so that the kernel may hand it to either worker."""
    return httpx.post(f"{url}/generate", json=body, timeout=60, headers={"Connection": "close"})


def chained(url: str, prompt: str, lengths: list[int], seed: int) -> str:
    """The text of a generation made of continuations of `lengths` characters each."""
    answer = post(url, {"prompt": prompt, "max_tokens": lengths[0], "seed": seed,
                        "return_state": True}).json()
    text, state = answer["text"], answer["state"]
    for length in lengths[1:]:
        answer = post(url, {"prompt": "", "max_tokens": length, "state": state,
                            "return_state": True}).json()
        text, state = text + answer["text"], answer["state"]
    return text


def test_continuations_on_any_worker_give_the_text_of_one_generation(server, home):
    whole = post(server, {"prompt": "To be", "max_tokens": 400, "seed": 4})
    assert "state" not in whole.json()
    for lengths in ([100, 300], [1, 199, 50, 150], [250, 1, 1, 148]):
        assert chained(server, "To be", lengths, 4) == whole.json()["text"]
    assert (home / KEY_FILE).stat().st_mode & 0o777 == 0o600  # one key, made once, for both workers


def test_the_stream_sends_the_state_before_the_end_and_continues_exactly(server):
    body = {"prompt": "Once", "max_tokens": 120, "seed": 7, "return_state": True}
    with httpx.Client(base_url=server, timeout=60) as client, \
            connect_sse(client, "POST", "/generate_stream", json=body) as source:
        events = [(event.event, event.data) for event in source.iter_sse()]
    assert [kind for kind, _ in events[-2:]] == ["state", "end"]
    state = json.loads(events[-2][1])["state"]
    head = "".join(data for kind, data in events if kind == "message")
    tail = post(server, {"prompt": "", "max_tokens": 80, "state": state}).json()["text"]
    assert head + tail == post(server, {"prompt": "Once", "max_tokens": 200, "seed": 7}).json()["text"]


def test_continuations_beside_other_requests_and_forks_of_one_state(server):
    head = post(server, {"prompt": "A", "max_tokens": 50, "seed": 2, "return_state": True}).json()
    whole = post(server, {"prompt": "A", "max_tokens": 350, "seed": 2}).json()["text"]
    others = [{"prompt": "x" * n, "max_tokens": 500, "seed": n} for n in range(1, 5)]
    alone = [post(server, body).json()["text"] for body in others]
    forks = [{"prompt": "", "max_tokens": 300, "state": head["state"]}] * 3
    with ThreadPoolExecutor(len(others) + len(forks)) as pool:
        answers = list(pool.map(lambda body: post(server, body).json()["text"], others + forks))
    assert answers[:len(others)] == alone
    assert [head["text"] + tail for tail in answers[len(others):]] == [whole] * len(forks)


def test_bad_states_are_refused_with_the_reason_and_the_others_served(server, home, tiny_shipped_dir):
    good = post(server, {"prompt": "B", "max_tokens": 10, "seed": 1, "return_state": True}).json()
    tag = next(card["tag"] for card in httpx.get(f"{server}/models").json()
               if card["task"] == "generator")
    key = key_from("", home)
    module = CharGenerator.load(tiny_shipped_dir / "char-generator").module
    shape = {"parts": len(module.init_state(1)), "num_layers": module.config.num_layers,
             "hidden_size": module.config.hidden_size, "vocab_size": module.config.vocab_size}
    ours = Sessions(key, tag, 60, 1 << 20, shape)
    # a real state re-signed with the server's key: for another tag, and already expired
    sequence = ours.open(good["state"])
    foreign = Sessions(key, "char-generator:other", 60, 1 << 20, shape).seal(sequence)
    expired = ours.seal(sequence, now=0.0)
    flipped = good["state"][:100] + ("A" if good["state"][100] != "A" else "B") + good["state"][101:]
    cases = [(flipped, 400, "signature"), (good["state"][:-4], 400, "signature"),
             ("%%%", 400, "state"), (foreign, 409, f"char-generator:other, this service runs {tag}"),
             (expired, 410, "expired")]
    for state, status, words in cases:
        answer = post(server, {"prompt": "", "max_tokens": 5, "state": state})
        assert answer.status_code == status, answer.text
        assert answer.json()[0]["error"].startswith("state: ") and words in answer.json()[0]["error"]
        with httpx.Client(base_url=server, timeout=60) as client:
            streamed = client.post("/generate_stream", json={"prompt": "", "max_tokens": 5,
                                                             "state": state})
        assert streamed.status_code == status and "state: " in streamed.text
    too_long = post(server, {"prompt": "", "max_tokens": 5, "state": "x" * 40000})
    assert too_long.status_code == 400 and "state" in too_long.text
    assert post(server, {"prompt": "", "max_tokens": 5, "state": good["state"]}).status_code == 200
    metrics = httpx.get(f"{server}/metrics").text
    for event in ("started", "continued", "expired", "refused"):
        assert f'rnnserve_sessions_total{{event="{event}"}}' in metrics


def test_a_state_continues_exactly_after_a_restart(tiny_shipped_dir, tmp_path):
    home = import_models(tiny_shipped_dir, tmp_path / "bentoml_home")
    with serving(REPO_ROOT, home, tmp_path / "first.log", WORKERS) as first:
        head = post(first.url, {"prompt": "To", "max_tokens": 60, "seed": 9,
                                "return_state": True}).json()
        whole = post(first.url, {"prompt": "To", "max_tokens": 200, "seed": 9}).json()["text"]
    with serving(REPO_ROOT, home, tmp_path / "second.log", WORKERS) as second:
        tail = post(second.url, {"prompt": "", "max_tokens": 140, "state": head["state"]})
    assert tail.status_code == 200, tail.text
    assert head["text"] + tail.json()["text"] == whole
