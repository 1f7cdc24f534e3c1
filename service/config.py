"""The service's settings: one frozen dataclass read from RNNSERVE_* environment variables.

Every field is one variable, named RNNSERVE_ + the field name in capitals, with its default and
help text beside it; docs/configuration.md is generated from it (`make docs`). A bad value stops
the server at start with the variable named, rather than surfacing later as a 500.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from models.names import PRECISIONS

ENV_PREFIX = "RNNSERVE_"


def setting(default: Any, help: str, minimum: float | None = None,
            choices: tuple[str, ...] | None = None,
            parse: Callable[[Any], object] | None = None) -> Any:
    """A field; `parse` checks a value read from the environment and raises ValueError."""
    return dataclasses.field(default=default, metadata={"help": help, "minimum": minimum,
                                                        "choices": choices, "parse": parse})


# The tasks whose models RNNSERVE_PRECISION sets (models.sentiment/generator/translator.TASK).
TASKS = ("sentiment", "generator", "translator")
# float16 weights are lossless for artifacts stored in float16 (every one training writes) and
# answer the same whatever the batchmates; the classifier stays float32, where float16 adds
# least (docs/performance.md, "Precisions").
DEFAULT_PRECISION = "sentiment=float32,generator=float16,translator=float16"


def parse_precisions(value: str) -> dict[str, str]:
    """Each task's precision: `value` is comma-separated items applied in order, either a
    precision for every task or TASK=PRECISION for one; tasks it leaves out keep the default.

    >>> parse_precisions("float32")["generator"]
    'float32'
    >>> parse_precisions("generator=int8")
    {'sentiment': 'float32', 'generator': 'int8', 'translator': 'float16'}
    """
    precisions: dict[str, str] = {}
    for items in (DEFAULT_PRECISION, value):
        for item in filter(None, (part.strip() for part in items.split(","))):
            task, _, precision = item.rpartition("=")
            if precision not in PRECISIONS:
                raise ValueError(f"{precision!r} is not a precision: must be one of {', '.join(PRECISIONS)}")
            if task and task not in TASKS:
                raise ValueError(f"{task!r} is not a task: must be one of {', '.join(TASKS)}")
            precisions.update({name: precision for name in ((task,) if task else TASKS)})
    return precisions


PUBLIC_GROUPS = {
    "health": ("/livez", "/readyz", "/healthz"),
    "metrics": ("/metrics",),
    "docs": ("/", "/docs.json", "/static_content", "/playground"),
}


def parse_public(value: str) -> tuple[str, ...]:
    """The groups of RNNSERVE_AUTH_PUBLIC."""
    groups = tuple(filter(None, (part.strip() for part in value.split(","))))
    for group in groups:
        if group not in PUBLIC_GROUPS:
            raise ValueError(f"{group!r} is not a path group: must be one of {', '.join(PUBLIC_GROUPS)}")
    return groups


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process may run on: its affinity mask, lowered by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open(os.path.join(cgroup_root, "cpu.max")) as file:
            quota, period = file.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to honour
    return max(1, cpus)


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
                             "429: a memory bound", 1)
    max_queue_wait_s: float = setting(0.5, "a request gets 429 when the work queued ahead of it "
                                      "would take longer than this to reach the model, at the "
                                      "rate the model drains its queue when saturated (for "
                                      "generation: until a row of the batch frees); never while "
                                      "less than one full batch is queued, nor before the rate "
                                      "is measured. Bounds the wait after an overload (docs/serving.md, "
                                      "Shedding); 0: off, the item bound alone", 0)
    # compute
    precision: str = setting(DEFAULT_PRECISION, "each model's precision: one for all (float32, "
                             "float16, bfloat16 or int8), or TASK=PRECISION items over the default "
                             "(sentiment, generator, translator). float16: float16 LSTM/GRU/Linear "
                             "weights, float32 arithmetic; bfloat16: every weight and activation "
                             "in bfloat16; int8: dynamic int8 LSTM/GRU/Linear weights "
                             "(models.quantize). Made at load from the same artifacts; docs/performance.md "
                             "gives their speed, quality and batch independence",
                             parse=parse_precisions)
    # processes
    torch_threads: int = setting(1, "torch intra-op threads per worker", 1)
    workers: int = setting(0, "worker processes, each with its own copy of the models; 0: one per "
                           "CPU this process may use (its affinity mask and cgroup CPU quota), at "
                           "least one", 0)
    listen: str = setting("per-worker", "with several workers, per-worker: each listens on its own "
                          "SO_REUSEPORT socket and the kernel spreads connections over them (Linux); "
                          "shared: all accept from BentoML's one socket", choices=("per-worker", "shared"))
    rebalance: str = setting("on", "with per-worker sockets, on: a worker holding more than its "
                             "share of the active connections answers that many requests with "
                             "Connection: close, so their clients reconnect and the kernel places "
                             "them afresh (service/transport/balance.py); off: connections stay where the "
                             "kernel's hash put them", choices=("on", "off"))
    timeout_s: float = setting(60.0, "a request still running after this long gets 504; a generation "
                               "request that cannot finish within it gets 429 at once", 1)
    # connection limits, per worker (service/transport/limits.py)
    max_connections: int = setting(1024, "open connections per worker; one more gets 503 and is "
                                   "closed at once (also capped by the file-descriptor limit)", 1)
    header_timeout_s: float = setting(10.0, "a request's headers must arrive within this long of "
                                      "its first byte (or of the connection's start): else 408 "
                                      "and the connection closes", 0.1)
    body_timeout_s: float = setting(30.0, "a request's body must arrive within this long of its "
                                    "headers: else 408 and the connection closes", 0.1)
    keepalive_timeout_s: float = setting(5.0, "an idle keep-alive connection closes after this "
                                         "long", 0.1)
    max_header_bytes: int = setting(16384, "most bytes of a request's line and headers: else 431",
                                    256)
    max_headers: int = setting(100, "most headers in a request: else 431", 1)
    max_body_bytes: int = setting(1 << 20, "most bytes of a request body: else 413, before the "
                                  "body is read when Content-Length says so (the default fits the "
                                  "largest valid request, 64 texts of 1,000 escaped characters)", 1)
    # who may call
    auth_token: str = setting("", "when set, every request needs `Authorization: Bearer <token>` "
                              "(else 401), but for the paths RNNSERVE_AUTH_PUBLIC names; compared "
                              "in constant time. Set it whenever the port is reachable by anyone "
                              "but trusted callers")
    auth_token_file: str = setting("", "a file whose first line is the token, read at start "
                                   "instead of RNNSERVE_AUTH_TOKEN (set one, not both): a mounted "
                                   "secret stays out of the environment, which any process of the "
                                   "same user can read in /proc/<pid>/environ")
    auth_public: str = setting("health,metrics", "with a token, the path groups that stay open: "
                               "any of health (/livez, /readyz, /healthz), metrics (/metrics) and "
                               "docs (/, /docs.json, BentoML's static files and /playground), "
                               "comma-separated; '' for none", parse=lambda value: parse_public(value))
    coalesce_writes: str = setting("on", "on: what the HTTP server writes to a connection in one "
                                   "event-loop turn goes out as one send (an answer's headers and "
                                   "body together; service/transport/writes.py); off: each write as uvicorn "
                                   "makes it", choices=("on", "off"))
    access_log: str = setting("off", "on: BentoML's access log, a line per request (path, status, "
                              "time), which costs /sentiment ~8% of its requests/s at c=64; /metrics "
                              "counts requests by endpoint and status either way, and errors are "
                              "logged either way", choices=("on", "off"))
    # generation sessions (service/sessions.py)
    state_key: str = setting("", "the key that signs generation states (HMAC-SHA256); every "
                             "replica that should continue another's sessions needs the same one. "
                             "Unset: a random key made once in $BENTOML_HOME/rnnserve_state_key "
                             "(mode 0600), shared by the workers and kept across restarts. "
                             "Changing it refuses every state issued before (400)")
    state_ttl_s: float = setting(86400.0, "a state returned by return_state can be continued for "
                                 "this long; later 410", 1)
    max_state_chars: int = setting(32768, "most characters in a `state` (the shipped generator's "
                                   "tokens are ~16,000); longer: 400. A model whose state would "
                                   "not fit fails return_state with 500", 64)
    # request limits
    max_texts: int = setting(64, "most texts in one /sentiment or /translate request", 1)
    max_sentiment_chars: int = setting(1000, "most characters in one /sentiment text", 1)
    max_explain_texts: int = setting(8, "most texts in one /sentiment request with explain: true "
                                     "(each costs a model batch of 2 x its tokens texts)", 1)
    max_explain_tokens: int = setting(64, "most tokens (words after normalisation) in one text of "
                                      "a /sentiment request with explain: true", 1)
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
            if field.metadata["parse"] is not None:
                try:
                    field.metadata["parse"](value)
                except ValueError as error:
                    raise ValueError(f"{name}={raw!r}: {error}") from None
            values[field.name] = value
        if values.get("auth_token_file"):
            values["auth_token"] = read_token_file(values["auth_token_file"],
                                                   "auth_token" in values)
        return cls(**values)

    @property
    def worker_count(self) -> int:
        """`workers`, with 0 resolved to the CPUs this process may use."""
        return self.workers or usable_cpus()

    @property
    def public_paths(self) -> frozenset[str]:
        """The paths a request may reach without the token (`auth_public`)."""
        return frozenset(path for group in parse_public(self.auth_public) for path in PUBLIC_GROUPS[group])

    @property
    def precisions(self) -> dict[str, str]:
        """The precision of each task's models (`parse_precisions`)."""
        return parse_precisions(self.precision)

    @classmethod
    def describe(cls) -> Iterator[tuple[str, Any, str]]:
        """(variable, default, help) for every setting, in declaration order."""
        for field in dataclasses.fields(cls):
            yield env_name(field.name), field.default, field.metadata["help"]


def read_token_file(path: str, token_set_too: bool) -> str:
    """The token in the first line of `path`, for RNNSERVE_AUTH_TOKEN_FILE."""
    name = env_name("auth_token_file")
    if token_set_too:
        raise ValueError(f"{name} and {env_name('auth_token')} are both set: set one")
    try:
        with open(path, encoding="utf-8") as file:
            token = file.readline().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{name}={path!r}: cannot read it ({error})") from None
    if not token:
        raise ValueError(f"{name}={path!r}: its first line is empty")
    return token


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


# -- the generated settings table (docs/configuration.md; `make docs` rewrites it) --------------

TABLE_START = "<!-- settings:start (generated by `make docs` from service/config.py) -->"
TABLE_END = "<!-- settings:end -->"


def markdown_table() -> str:
    """Every setting as a markdown table: variable, default, accepted values and help."""
    lines = ["| variable | default | accepts | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(Settings):
        choices, minimum = field.metadata["choices"], field.metadata["minimum"]
        if choices is not None:
            accepts = " or ".join(f"`{choice}`" for choice in choices)
        elif field.metadata["parse"] is parse_precisions:
            accepts = f"`PRECISION` or `TASK=PRECISION` items, precisions {', '.join(PRECISIONS)}"
        elif minimum is not None:
            accepts = f"{type(field.default).__name__} >= {minimum:g}"
        else:
            accepts = type(field.default).__name__
        lines.append(f"| `{env_name(field.name)}` | `{field.default}` | {accepts} | "
                     f"{field.metadata['help']} |")
    return "\n".join(lines) + "\n"


def with_table(text: str) -> str:
    """`text` with the part between TABLE_START and TABLE_END replaced by `markdown_table()`."""
    before, start, rest = text.partition(TABLE_START)
    _, end, after = rest.partition(TABLE_END)
    if not start or not end:
        raise ValueError(f"no {TABLE_START} ... {TABLE_END} block")
    return f"{before}{TABLE_START}\n{markdown_table()}{TABLE_END}{after}"


def main(argv: list[str] | None = None) -> None:
    """Print the table, or with --update FILE rewrite that file's generated block."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--update", type=Path, metavar="FILE", help="rewrite FILE's settings table")
    args = parser.parse_args(argv)
    if args.update is None:
        print(markdown_table(), end="")
    else:
        args.update.write_text(with_table(args.update.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main()
