"""Locust users for rnn-serve: one per endpoint, and a mixed profile.

    make load                                   # MixedUser against http://127.0.0.1:3000
    make load TARGET=http://host:3000 USERS=50 DURATION=2m PROFILE="SentimentUser TranslateUser"

Bodies come from the validation splits only (loadtest/payloads.py). Every response is checked,
not only its status: a 200 with the wrong number of results is a failure. /generate_stream is
timed to its first chunk (BentoML sends the headers with it: the request's time is the time to
first token), and the whole stream is recorded again as "/generate_stream (complete)", a failure
unless its Server-Sent Events end with `event: end` after max_tokens characters.
"""

from __future__ import annotations

import time

from locust import FastHttpUser, between, events, task

from loadtest.payloads import Bodies, load_validation_texts

TEXTS = load_validation_texts()


class RNNServeUser(FastHttpUser):
    abstract = True
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.bodies = Bodies(TEXTS)

    def post_checked(self, path: str, body: dict, expected_items: int | None) -> None:
        """POST `body`; a JSON list answer must have `expected_items` items."""
        with self.client.post(path, json=body, name=path, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            answer = response.json()
            if expected_items is not None and len(answer) != expected_items:
                response.failure(f"{len(answer)} results for {expected_items} texts")

    def sentiment(self) -> None:
        body = self.bodies.sentiment()
        self.post_checked("/sentiment", body, len(body["texts"]))

    def translate(self) -> None:
        body = self.bodies.translate()
        self.post_checked("/translate", body, len(body["texts"]))

    def generate(self) -> None:
        body = self.bodies.generate()
        with self.client.post("/generate", json=body, name="/generate",
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif response.json()["tokens"] != body["max_tokens"]:
                response.failure(f"{response.json()['tokens']} tokens, asked {body['max_tokens']}")

    def generate_stream(self) -> None:
        body = self.bodies.generate()
        started = time.perf_counter()
        response = self.client.post("/generate_stream", json=body, name="/generate_stream",
                                    stream=True)
        if response.status_code != 200:
            return  # already recorded as a failure
        exception = None
        received = 0  # characters of text in the stream's message events
        try:
            chunks = list(response.iter_content(chunk_size=4096, decode_content=True))  # str here
            parsed = server_sent_events("".join(c if isinstance(c, str) else c.decode() for c in chunks))
            received = sum(len(data) for kind, data in parsed if kind == "message")
            kind, data = parsed[-1] if parsed else ("nothing", "")
            if kind != "end":
                exception = RuntimeError(f"stream ended with {kind} {data[:200]} after {received} "
                                         "characters")
            elif received != body["max_tokens"]:
                exception = RuntimeError(f"{received} characters, asked {body['max_tokens']}")
        except Exception as error:  # the stream broke off
            exception = error
        events.request.fire(request_type="POST", name="/generate_stream (complete)",
                            response_time=(time.perf_counter() - started) * 1000,
                            response_length=received, response=None, context={},
                            exception=exception)


def server_sent_events(text: str) -> list[tuple[str, str]]:
    """(event type, data) of each event of a whole Server-Sent Events stream."""
    parsed = []
    for block in text.split("\n\n"):
        if not block:
            continue
        kind, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            if field == "event":
                kind = value.removeprefix(" ")
            elif field == "data":
                data.append(value.removeprefix(" "))
        parsed.append((kind, "\n".join(data)))
    return parsed


class SentimentUser(RNNServeUser):
    @task
    def sentiment_task(self) -> None:
        self.sentiment()


class TranslateUser(RNNServeUser):
    @task
    def translate_task(self) -> None:
        self.translate()


class GenerateUser(RNNServeUser):
    @task(3)
    def generate_task(self) -> None:
        self.generate()

    @task(1)
    def generate_stream_task(self) -> None:
        self.generate_stream()


class MixedUser(RNNServeUser):
    """Traffic as a product might see it: mostly classification, some translation, a little generation."""

    @task(10)
    def sentiment_task(self) -> None:
        self.sentiment()

    @task(4)
    def translate_task(self) -> None:
        self.translate()

    @task(2)
    def generate_task(self) -> None:
        self.generate()

    @task(1)
    def generate_stream_task(self) -> None:
        self.generate_stream()
