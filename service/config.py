"""The service's settings: one frozen dataclass read from RNNSERVE_* environment variables.

Every field is one variable, named RNNSERVE_ + the field name in capitals, with its default and
help text beside it; the README table lists the same. A bad value stops the server at start with
the variable named, rather than surfacing later as a 500.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from models.quantize import PRECISIONS

ENV_PREFIX = "RNNSERVE_"


def setting(default: Any, help: str, minimum: float | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    return dataclasses.field(default=default,
                             metadata={"help": help, "minimum": minimum, "choices": choices})


@dataclass(frozen=True)
class Settings:
    # which store models to serve
    sentiment_model: str = setting("sentiment-rnn:latest", "store tag of the sentiment model")
    generator_model: str = setting("char-generator:latest", "store tag of the character generator")
    translator_de_model: str = setting("translator-de-en:latest", "store tag of the German->English "
                                       "translator")
    translator_ko_model: str = setting("translator-ko-en:latest", "store tag of the Korean->English "
                                       "translator")
    # batching
    max_batch_size: int = setting(64, "most texts in one sentiment or translation model batch", 1)
    max_batch_tokens: int = setting(8192, "token budget of one batch: rows x longest input "
                                    "(x widest beam for translation); a single longer item still runs", 1)
    max_wait_ms: float = setting(1.0, "after a batch, wait at most this long for more items when "
                                 "requests queued during it; never when idle", 0)
    inline_max_tokens: int = setting(32, "under light load (its model idle, its last batch a lone "
                                     "text too, the worker's other models idle), a lone /sentiment "
                                     "text of at most this many words "
                                     "runs on the event loop's thread: two thread hand-offs fewer, "
                                     "the loop blocked for its model time (~3 ms at 32 words, "
                                     "float32); 0: never", 0)
    max_active_sequences: int = setting(64, "most sequences in the running generation batch; more "
                                        "wait to join", 1)
    max_queue: int = setting(2048, "items (texts or prompts) waiting per model before requests get "
                             "429", 1)
    # compute
    precision: str = setting("float32", "float32; float16: float16 LSTM/GRU/Linear weights, "
                             "float32 arithmetic; bfloat16: every weight and activation in "
                             "bfloat16; or int8: dynamic int8 LSTM/GRU/Linear weights "
                             "(models.quantize). Made at load from the same artifacts; the README "
                             "gives their speed, quality and batch independence", choices=PRECISIONS)
    # processes
    torch_threads: int = setting(1, "torch intra-op threads per worker", 1)
    workers: int = setting(1, "worker processes, each with its own copy of the models", 1)
    listen: str = setting("per-worker", "with several workers, per-worker: each listens on its own "
                          "SO_REUSEPORT socket and the kernel spreads connections evenly (Linux); "
                          "shared: all accept from BentoML's one socket", choices=("per-worker", "shared"))
    timeout_s: float = setting(60.0, "a request still running after this long gets 504", 1)
    # request limits
    max_texts: int = setting(64, "most texts in one /sentiment or /translate request", 1)
    max_sentiment_chars: int = setting(1000, "most characters in one /sentiment text", 1)
    max_translation_chars: int = setting(500, "most characters in one /translate text", 1)
    max_prompt_chars: int = setting(1000, "most characters in a /generate prompt", 1)
    max_tokens: int = setting(2000, "largest max_tokens a /generate request may ask for", 1)
    max_translation_length: int = setting(256, "largest max_length (target pieces) a /translate "
                                          "request may ask for; also caps the default", 1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `environ` (default os.environ); unset variables keep their defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = env_name(field.name)
            if name not in environ:
                continue
            raw = environ[name]
            kind = type(field.default)
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r}: expected {kind.__name__}") from None
            choices = field.metadata["choices"]
            if choices is not None and value not in choices:
                raise ValueError(f"{name}={raw!r}: must be one of {', '.join(choices)}")
            minimum = field.metadata["minimum"]
            if minimum is not None and value < minimum:
                raise ValueError(f"{name}={raw!r}: must be at least {minimum}")
            values[field.name] = value
        return cls(**values)

    @classmethod
    def describe(cls) -> Iterator[tuple[str, Any, str]]:
        """(variable, default, help) for every setting, in declaration order."""
        for field in dataclasses.fields(cls):
            yield env_name(field.name), field.default, field.metadata["help"]


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()
