"""The HTTP service: sentiment, generation and translation from one BentoML service.

    make serve   # = python -m training.store import-shipped; bentoml serve service.app:RNNServe

Thin on purpose: a request is validated (service.schemas), encoded by its models.* pipeline,
batched (service.batching for sentiment and translation, service.generation for generation),
and the pipeline's answer returned. The contract is in the README's "Serving" section.

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
from starlette.routing import Route

from service import metrics
from service.balance import ConnectionBalancer, worker_counts
from service.config import Settings
from service.integrity import verify_served_models
from service.middleware import DirectEndpoints, EndpointMiddleware, fix_bentoml_timeout_middleware
from service.schemas import GenerateResult, SentimentResult, TranslationResult, request_models
from service.sockets import balance_connections
from service.writes import coalesce_http_writes

if TYPE_CHECKING:
    from service.runtime import Runtime

SETTINGS = Settings.from_env()
fix_bentoml_timeout_middleware()
if SETTINGS.listen == "per-worker":
    balance_connections(SETTINGS.workers)  # in a worker, before BentoML wraps its socket
if SETTINGS.coalesce_writes == "on":
    coalesce_http_writes()
REQUESTS = request_models(SETTINGS)
TRACING_EXCLUDED = ("/sentiment", "/translate", "/generate")  # /generate covers /generate_stream


async def list_models(request: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().runtime.model_cards)


MODELS_APP = Starlette(routes=[Route("/models", list_models, methods=["GET"])])


@bentoml.asgi_app(MODELS_APP, path="/")
# No OpenTelemetry spans for the model endpoints: with no exporter configured they are built and
# thrown away, and building them cost ~15% of the worker's time per request (py-spy, c=64).
@bentoml.service(workers=SETTINGS.workers, traffic={"timeout": SETTINGS.timeout_s},
                 tracing={"excluded_urls": list(TRACING_EXCLUDED)},
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
    async def sentiment(self, texts: list[str]) -> list[SentimentResult]:
        """negative/positive for each text, in order. An empty text gets the model's prior."""
        return await self.runtime.sentiment(texts)

    @bentoml.api(input_spec=REQUESTS.generate)
    async def generate(self, prompt: str, max_tokens: int = 200, temperature: float = 0.8,
                       top_k: int = 0, seed: int | None = None) -> GenerateResult:
        """The continuation of `prompt` (without it). The same seed gives the same text."""
        chars: list[str] = []
        async for piece in self.runtime.generation.stream(prompt, max_tokens, temperature, top_k,
                                                          seed, "generate"):
            chars.extend(piece)
        return GenerateResult(text="".join(chars), tokens=len(chars))

    @bentoml.api(input_spec=REQUESTS.generate)
    async def generate_stream(self, prompt: str, max_tokens: int = 200, temperature: float = 0.8,
                              top_k: int = 0, seed: int | None = None) -> AsyncGenerator[str, None]:
        """/generate's continuation as text/event-stream, sent as it is generated."""
        sent = False
        try:
            async for piece in self.runtime.generation.stream(prompt, max_tokens, temperature,
                                                              top_k, seed, "generate_stream"):
                sent = True
                yield "".join(piece)
        except Exception:
            # before the first chunk BentoML still answers with an error status (counted by the
            # middleware); after it the stream can only stop, so count the failure here
            if sent:
                metrics.errors.labels("generate_stream", "internal").inc()
            raise

    @bentoml.api(input_spec=REQUESTS.translate)
    async def translate(self, texts: list[str], source: str = "de", beam_size: int = 1,
                        max_length: int | None = None,
                        return_attention: bool = False) -> list[TranslationResult]:
        """English for each text, in order. An empty text translates to EOS only: ""."""
        return await self.runtime.translate(texts, source, beam_size, max_length, return_attention)


# BentoML works out the media type of an answer that is a list (a root model) from its JSON
# schema, which pydantic rebuilds for every response: ~20% of a worker's time at 64 concurrent
# /sentiment requests. These answers are always JSON, so say so once.
for list_answer in ("sentiment", "translate"):
    RNNServe.apis[list_answer].output_spec.media_type = "application/json"

# The first added is the outermost. ConnectionBalancer sees every request. DirectEndpoints
# answers the JSON endpoints itself and counts their errors; the other requests to the service's
# paths (GET, /generate_stream) go on through EndpointMiddleware to BentoML's routes.
RNNServe.add_asgi_middleware(ConnectionBalancer, counts=lambda: (
    worker_counts(SETTINGS.workers)
    if SETTINGS.listen == "per-worker" and SETTINGS.rebalance == "on" else None))
RNNServe.add_asgi_middleware(DirectEndpoints, apis={
    f"/{name}": RNNServe.apis[name] for name in ("sentiment", "translate", "generate")},
    server_header=f"BentoML Service/{RNNServe.name}")
RNNServe.add_asgi_middleware(EndpointMiddleware, endpoints={
    "/sentiment": "sentiment", "/generate": "generate", "/generate_stream": "generate_stream",
    "/translate": "translate", "/models": "models"})
