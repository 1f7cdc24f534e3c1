"""The HTTP service: sentiment, generation and translation from one BentoML service.

    make serve   # = python -m training.store import-shipped; bentoml serve service.app:RNNServe

Thin on purpose: a request is validated (service.schemas), encoded by its models.* pipeline,
batched (service.batching for sentiment and translation, service.generation for generation),
and the pipeline's answer returned. The contract is in the README's "Serving" section.

Settings are read once, when BentoML imports this module: the service decorator (workers,
timeout) and the request schemas (limits) need them before any instance exists.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import bentoml
import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from models import generator as generator_task
from models import sentiment as sentiment_task
from models import translator as translator_task
from models.artifact import METRICS_FILE, parameter_count, read_json
from models.generator import CharGenerator
from models.quantize import with_precision
from models.sentiment import LABELS, EncodedText, SentimentClassifier
from models.translator import Translation, Translator
from service import metrics
from service.batching import Batcher
from service.config import Settings
from service.generation import GenerationLoop
from service.middleware import DirectEndpoints, EndpointMiddleware, fix_bentoml_timeout_middleware
from service.schemas import GenerateResult, SentimentResult, TranslationResult, request_models
from service.sockets import balance_connections

log = logging.getLogger(__name__)

SETTINGS = Settings.from_env()
fix_bentoml_timeout_middleware()
if SETTINGS.listen == "per-worker":
    balance_connections(SETTINGS.workers)  # in a worker, before BentoML wraps its socket
REQUESTS = request_models(SETTINGS)
WARM_UP_TEXT = "A warm-up sentence."
TRACING_EXCLUDED = ("/sentiment", "/translate", "/generate")  # /generate covers /generate_stream


@dataclasses.dataclass(frozen=True)
class TranslationJob:
    """One text of a /translate request, as its batcher item."""

    source_ids: list[int]
    beam_size: int
    max_length: int


async def list_models(request: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().model_cards)


MODELS_APP = Starlette(routes=[Route("/models", list_models, methods=["GET"])])


def model_card(ref: bentoml.Model, task: str, module: torch.nn.Module) -> dict[str, Any]:
    """What /models says about one loaded model."""
    metrics_file = Path(ref.path) / METRICS_FILE
    return {
        "name": ref.tag.name,
        "tag": str(ref.tag),
        "task": task,
        "cell": module.config.cell,
        "parameters": parameter_count(module),
        "config": dataclasses.asdict(module.config),
        "metrics": read_json(metrics_file) if metrics_file.is_file() else {},
    }


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

    def __init__(self) -> None:
        settings = SETTINGS
        torch.set_num_threads(settings.torch_threads)
        self.classifier = SentimentClassifier.load(self.sentiment_ref.path)
        self.generator = CharGenerator.load(self.generator_ref.path)
        self.translators = {"de": Translator.load(self.translator_de_ref.path),
                            "ko": Translator.load(self.translator_ko_ref.path)}
        for source, translator in self.translators.items():
            if translator.config.source_lang != source:
                raise ValueError(f"the {source} translator's model translates from "
                                 f"{translator.config.source_lang!r}: check RNNSERVE_TRANSLATOR_"
                                 f"{source.upper()}_MODEL")
        self.model_cards = [
            model_card(self.sentiment_ref, sentiment_task.TASK, self.classifier.module),
            model_card(self.generator_ref, generator_task.TASK, self.generator.module),
            *(model_card(ref, translator_task.TASK, self.translators[source].module)
              for source, ref in (("de", self.translator_de_ref), ("ko", self.translator_ko_ref))),
        ]
        precisions = settings.precisions
        for card in self.model_cards:
            card["precision"] = precisions[card["task"]]
            metrics.model_info.labels(card["name"], card["tag"], card["task"], card["cell"]).set(1)
        # after the cards: they count the float parameters the artifacts hold
        for task, pipeline in ((sentiment_task.TASK, self.classifier), (generator_task.TASK, self.generator),
                               *((translator_task.TASK, t) for t in self.translators.values())):
            pipeline.module = with_precision(pipeline.module, precisions[task])
        self._warm_up()

        batching = {"max_batch_size": settings.max_batch_size,
                    "max_batch_tokens": settings.max_batch_tokens,
                    "max_wait_s": settings.max_wait_ms / 1000, "max_queue": settings.max_queue}
        self.sentiment_batcher = Batcher(
            self.sentiment_ref.tag.name, self._classify, **batching,
            inline_max_tokens=settings.inline_max_tokens,
            others_busy=lambda: any(loop.busy for loop in self._loops if loop is not self.sentiment_batcher))
        # a lone translation takes tens of milliseconds: always in the model's thread
        self.translate_batchers = {
            source: Batcher(ref.tag.name, self._translation_runner(source), **batching)
            for source, ref in (("de", self.translator_de_ref), ("ko", self.translator_ko_ref))}
        self.generation = GenerationLoop(self.generator_ref.tag.name, self.generator,
                                         max_active=settings.max_active_sequences,
                                         max_queue=settings.max_queue)
        self._loops = [self.sentiment_batcher, *self.translate_batchers.values(), self.generation]
        self._started = False
        # The models are loaded for good: keep them out of every future garbage collection,
        # whose full passes otherwise stall the worker ~150 ms every few seconds under load.
        gc.freeze()
        self._gc_pauses = metrics.GCPauses()

    def _warm_up(self) -> None:
        """One call of every model, so the first request does not pay for lazy initialisation."""
        self.classifier.predict_proba([WARM_UP_TEXT])
        # a batch big enough for ProjectedLSTM builds its per-word table now, not on a request
        self.classifier.predict_proba([WARM_UP_TEXT] * sentiment_task.PROJECTED_MIN_BATCH)
        self.generator.generate(WARM_UP_TEXT, max_tokens=2, seed=0)
        for translator in self.translators.values():
            translator.translate([WARM_UP_TEXT], beam_size=2)

    @bentoml.on_startup
    async def start_batching(self) -> None:
        for loop in self._loops:
            loop.start()
        self._gc_pauses.start()
        self._started = True
        log.info("models loaded and warmed; batching started")

    @bentoml.on_shutdown
    async def stop_batching(self) -> None:
        for loop in self._loops:
            await loop.close()
        await self._gc_pauses.close()

    def __is_alive__(self) -> bool:
        return not self._started or all(loop.running for loop in self._loops)

    def __is_ready__(self) -> bool:
        return self._started and all(loop.running for loop in self._loops)

    # -- model calls, run by the batchers in their threads -------------------------------------

    def _classify(self, sequences: list[EncodedText]) -> list[list[float]]:
        return self.classifier.predict_ids(sequences).tolist()  # (B, C)

    def _translation_runner(self, source: str):
        translator = self.translators[source]

        def translate(jobs: list[TranslationJob]) -> list[Translation]:
            hypotheses = translator.translate_ids([job.source_ids for job in jobs],
                                                  [job.beam_size for job in jobs],
                                                  [job.max_length for job in jobs])
            return [translator.to_translation(job.source_ids, hypothesis)
                    for job, hypothesis in zip(jobs, hypotheses, strict=True)]

        return translate

    # -- endpoints -------------------------------------------------------------------------------

    @bentoml.api(input_spec=REQUESTS.sentiment)
    async def sentiment(self, texts: list[str]) -> list[SentimentResult]:
        """negative/positive for each text, in order. An empty text gets the model's prior."""
        sequences = [self.classifier.encode(text) for text in texts]
        probabilities = await self.sentiment_batcher.submit(sequences, [len(s) for s in sequences])
        return [sentiment_result(p) for p in probabilities]

    @bentoml.api(input_spec=REQUESTS.generate)
    async def generate(self, prompt: str, max_tokens: int = 200, temperature: float = 0.8,
                       top_k: int = 0, seed: int | None = None) -> GenerateResult:
        """The continuation of `prompt` (without it). The same seed gives the same text."""
        chars: list[str] = []
        async for piece in self.generation.stream(prompt, max_tokens, temperature, top_k, seed,
                                                  "generate"):
            chars.extend(piece)
        return GenerateResult(text="".join(chars), tokens=len(chars))

    @bentoml.api(input_spec=REQUESTS.generate)
    async def generate_stream(self, prompt: str, max_tokens: int = 200, temperature: float = 0.8,
                              top_k: int = 0, seed: int | None = None) -> AsyncGenerator[str, None]:
        """/generate's continuation as text/event-stream, sent as it is generated."""
        sent = False
        try:
            async for piece in self.generation.stream(prompt, max_tokens, temperature, top_k, seed,
                                                      "generate_stream"):
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
        translator = self.translators[source]
        jobs = []
        for text in texts:
            source_ids = translator.encode_source(text)
            limit = max_length if max_length is not None else min(
                translator.default_max_length(source_ids), SETTINGS.max_translation_length)
            jobs.append(TranslationJob(source_ids, beam_size, limit))
        translations = await self.translate_batchers[source].submit(
            jobs, [len(job.source_ids) for job in jobs], [beam_size] * len(jobs))
        return [translation_result(t, return_attention) for t in translations]


# BentoML works out the media type of an answer that is a list (a root model) from its JSON
# schema, which pydantic rebuilds for every response: ~20% of a worker's time at 64 concurrent
# /sentiment requests. These answers are always JSON, so say so once.
for list_answer in ("sentiment", "translate"):
    RNNServe.apis[list_answer].output_spec.media_type = "application/json"

RNNServe.add_asgi_middleware(EndpointMiddleware, endpoints={
    "/sentiment": "sentiment", "/generate": "generate", "/generate_stream": "generate_stream",
    "/translate": "translate", "/models": "models"})
# inside EndpointMiddleware, so its error counts see these answers too
RNNServe.add_asgi_middleware(DirectEndpoints, apis={
    f"/{name}": RNNServe.apis[name] for name in ("sentiment", "translate", "generate")},
    server_header=f"BentoML Service/{RNNServe.name}")


def sentiment_result(probabilities: list[float]) -> SentimentResult:
    best = max(range(len(LABELS)), key=probabilities.__getitem__)
    return SentimentResult(label=LABELS[best], score=probabilities[best],
                           probabilities=dict(zip(LABELS, probabilities, strict=True)))


def translation_result(translation: Translation, with_attention: bool) -> TranslationResult:
    if not with_attention:
        return TranslationResult(translation=translation.translation)
    return TranslationResult(translation=translation.translation,
                             source_tokens=translation.source_tokens,
                             target_tokens=translation.target_tokens,
                             attention=translation.attention)
