"""The HTTP service: sentiment, generation and translation from one BentoML service.

    make serve   # = python -m training.store import-shipped; bentoml serve service.app:RNNServe

A plain BentoML service: a request is validated (service.schemas), encoded by its models.*
pipeline, batched (service.batching for sentiment and translation, service.generation for
generation), and the pipeline's answer returned. The contract is in docs/serving.md. How
requests reach these methods (connection limits, one socket per worker, coalesced writes, the
JSON endpoints answered without BentoML's route) is service/transport's, installed by the two
transport calls below; docs/transport.md lists each piece.

Settings are read once, when BentoML imports this module: the service decorator (workers,
timeout) and the request schemas (limits) need them before any instance exists. This module
does not import torch: BentoML's supervisor imports it as well, and only the workers need the
models (service.runtime, imported in RNNServe.__init__).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from service import errors, openapi, playground, sse, transport
from service.auth import BearerAuth
from service.config import Settings
from service.integrity import verify_served_models
from service.schemas import (
    CharLogProb,
    GenerateResult,
    ScoreResult,
    SentimentResult,
    TranslationResult,
    request_models,
)

if TYPE_CHECKING:
    from service.runtime import Runtime

SETTINGS = Settings.from_env()
transport.install(SETTINGS)
REQUESTS = request_models(SETTINGS)
# every endpoint the service declares below, by path (a test holds the two together)
ENDPOINTS = {f"/{name}": name
             for name in ("sentiment", "generate", "generate_stream", "translate", "score")}
DIRECT = ("sentiment", "translate", "generate", "score")  # JSON in, JSON out: service.transport.direct


async def list_models(request: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().runtime.model_cards)


MODELS_APP = Starlette(routes=[Route("/models", list_models, methods=["GET"]),
                               Mount(playground.PATH, app=playground.app())])


@bentoml.asgi_app(MODELS_APP, path="/")
# No OpenTelemetry spans for the model endpoints: with no exporter configured they are built and
# thrown away, and building them cost ~15% of the worker's time per request (py-spy, c=64).
@bentoml.service(workers=SETTINGS.worker_count, traffic={"timeout": SETTINGS.timeout_s},
                 tracing={"excluded_urls": list(ENDPOINTS)},
                 logging={"access": {"enabled": SETTINGS.access_log == "on"}})
class RNNServe:
    sentiment_ref = bentoml.models.BentoModel(SETTINGS.sentiment_model)
    generator_ref = bentoml.models.BentoModel(SETTINGS.generator_model)
    translator_de_ref = bentoml.models.BentoModel(SETTINGS.translator_de_model)
    translator_ko_ref = bentoml.models.BentoModel(SETTINGS.translator_ko_model)

    @bentoml.on_deployment
    def verify_models() -> None:
        verify_served_models(RNNServe.models)  # in the supervisor, before any worker starts

    def __init__(self) -> None:
        from service.runtime import ModelRefs, Runtime  # torch: in the workers only

        self.runtime: Runtime = Runtime(SETTINGS, ModelRefs(
            self.sentiment_ref, self.generator_ref, self.translator_de_ref, self.translator_ko_ref))

    @bentoml.on_startup
    async def start_batching(self) -> None:
        self.runtime.start()

    @bentoml.on_shutdown
    async def stop_batching(self) -> None:
        await self.runtime.close()

    def __is_alive__(self) -> bool:
        return not self.runtime.started or self.runtime.running()

    def __is_ready__(self) -> bool:
        return self.runtime.started and self.runtime.running()

    # -- endpoints -------------------------------------------------------------------------------

    @bentoml.api(input_spec=REQUESTS.sentiment)
    async def sentiment(self, texts: list[str], explain: bool = False) -> list[SentimentResult]:
        """negative/positive for each text, in order. An empty text gets the model's prior.
        With explain: per text also its tokens, P(positive) after each and each one's importance
        (see them drawn in the [playground](/playground/#sentiment))."""
        if explain:
            return await self.runtime.explain_sentiment(texts)
        return await self.runtime.sentiment(texts)

    @bentoml.api(input_spec=REQUESTS.generate)
    async def generate(self, prompt: str, max_tokens: int = 200, temperature: float = 0.8,
                       top_k: int = 0, seed: int | None = None, logprobs: int = 0,
                       return_state: bool = False, state: str | None = None) -> GenerateResult:
        """The continuation of `prompt` (without it). The same seed gives the same text.
        With logprobs k: each character's log-probability and the k likeliest alternatives
        (see them in the [playground](/playground/#generation)). `state` continues an earlier
        generation; `return_state` answers one (service.sessions)."""
        chars: list[str] = []
        entries: list[dict] = []
        sealed: list[str] = []
        async for piece, log_probs in self.runtime.generate(
                prompt, max_tokens, temperature, top_k, seed, "generate", logprobs, state=state,
                return_state=return_state, sealed=sealed):
            chars.extend(piece)
            entries.extend(log_probs)
        return GenerateResult(
            text="".join(chars), tokens=len(chars),
            logprobs=[CharLogProb(**entry) for entry in entries] if logprobs else None,
            state=sealed[0] if sealed else None)

    @bentoml.api(input_spec=REQUESTS.generate)
    async def generate_stream(self, ctx: bentoml.Context, prompt: str, max_tokens: int = 200,
                              temperature: float = 0.8, top_k: int = 0, seed: int | None = None,
                              logprobs: int = 0, return_state: bool = False,
                              state: str | None = None) -> AsyncGenerator[str, None]:
        """/generate's continuation as Server-Sent Events, sent as it is generated: the text in
        `data:` events (with logprobs k, one JSON line {"text", "logprobs"} each), then
        `event: state` when asked, then `event: end`, or `event: error` with a JSON reason
        (service.sse)."""
        sealed: list[str] = []
        pieces = self.runtime.generate(prompt, max_tokens, temperature, top_k, seed,
                                       "generate_stream", logprobs, state=state,
                                       return_state=return_state, sealed=sealed)
        async for event in sse.event_stream(pieces, ctx.response, "generate_stream",
                                            with_log_probs=bool(logprobs), sealed=sealed):
            yield event

    @bentoml.api(input_spec=REQUESTS.translate)
    async def translate(self, texts: list[str], source: str = "de", beam_size: int = 1,
                        max_length: int | None = None,
                        return_attention: bool = False) -> list[TranslationResult]:
        """English for each text, in order. An empty text translates to EOS only: "".
        The [playground](/playground/#translation) draws return_attention's matrix."""
        return await self.runtime.translate(texts, source, beam_size, max_length, return_attention)

    @bentoml.api(input_spec=REQUESTS.score)
    async def score(self, text: str, prompt: str = "") -> ScoreResult:
        """The character model as a scorer: each character's surprisal (-ln p) after `prompt` and
        the text before it, at temperature 1 and top_k 0, and their mean."""
        return await self.runtime.score(text, prompt)


def admit(endpoint: str) -> None:
    """Raise Overloaded when `endpoint`'s model has no room (before its body is read)."""
    bentoml.get_current_service().runtime.admit(endpoint)


# The first added is the outermost; BentoML's own (metrics, access log, timeout) are outside all.
RNNServe.add_asgi_middleware(errors.ErrorCounting, endpoints={**ENDPOINTS, "/models": "models"})
if SETTINGS.auth_token:
    RNNServe.add_asgi_middleware(BearerAuth, token=SETTINGS.auth_token, public=SETTINGS.public_paths)
# /docs.json in the dialect of the OpenAPI version it declares, with the error bodies really sent
RNNServe.add_asgi_middleware(openapi.ServedDocument, document=lambda: openapi.document(RNNServe))
transport.wrap(RNNServe, SETTINGS, direct=DIRECT, admit=admit)
