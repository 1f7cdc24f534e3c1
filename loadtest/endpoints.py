"""What the benchmark measures per endpoint, and the request bodies it sends."""

from __future__ import annotations

from dataclasses import dataclass

from loadtest.payloads import ValidationTexts

GENERATE_TOKENS = 200
ENDPOINT_TASKS = {"sentiment": "sentiment", "translate": "translator", "generate": "generator"}


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    unit: str  # what the ceiling counts
    items_per_request: int  # units one request produces
    model: str  # rnnserve_batch_size's model label


ENDPOINTS = {
    "sentiment": Endpoint("sentiment", "/sentiment", "sentences", 1, "sentiment-rnn"),
    "translate": Endpoint("translate", "/translate", "sentences", 1, "translator-de-en"),
    "generate": Endpoint("generate", "/generate", "tokens", GENERATE_TOKENS, "char-generator"),
}


def request_bodies(texts: ValidationTexts) -> dict[str, list[dict]]:
    """What the benchmark sends: one sentence per request, greedy German, 200 characters."""
    return {
        "sentiment": [{"texts": [review]} for review in texts.reviews],
        "translate": [{"texts": [german], "source": "de"} for german in texts.german],
        "generate": [{"prompt": prompt, "max_tokens": GENERATE_TOKENS, "temperature": 0.8,
                      "seed": seed} for seed, prompt in enumerate(texts.prompts)],
    }
