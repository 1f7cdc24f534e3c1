"""What a worker serves: the loaded models and the loops that batch their calls.

Everything of the service that needs torch lives here. service.app imports this module inside
RNNServe.__init__, so only the worker processes load it: BentoML's supervisor process imports
service.app too, to read the service's configuration, and at module level that import would
keep torch and every model module resident (~190 MB) in a process that never runs a model.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bentoml
import torch

from models import generator as generator_task
from models import sentiment as sentiment_task
from models import translator as translator_task
from models.artifact import METRICS_FILE, parameter_count, read_json
from models.generator import CharGenerator
from models.names import LABELS
from models.quantize import with_precision
from models.sentiment import EncodedText, SentimentClassifier, explanation, explanation_inputs
from models.translator import Translation, Translator
from service import metrics
from service.batching import Batcher
from service.config import Settings
from service.generation import GenerationLoop
from service.integrity import stop_server_on_failure
from service.schemas import ScoreResult, SentimentResult, TranslationResult
from service.sessions import Sessions, bentoml_home, key_from, session_stream

log = logging.getLogger(__name__)

WARM_UP_TEXT = "A warm-up sentence."
GC_YOUNG_THRESHOLD = 7000  # allocations between collections of the youngest generation


@dataclasses.dataclass(frozen=True)
class ModelRefs:
    """The store entries a worker serves."""

    sentiment: bentoml.Model
    generator: bentoml.Model
    translator_de: bentoml.Model
    translator_ko: bentoml.Model


@dataclasses.dataclass(frozen=True)
class TranslationJob:
    """One text of a /translate request, as its batcher item."""

    source_ids: list[int]
    beam_size: int
    max_length: int


@dataclasses.dataclass(frozen=True)
class Explanation:
    """One /sentiment text with explain: true, as a single batcher item: its rows
    (models.sentiment.explanation_inputs) run in the same model call."""

    inputs: list[EncodedText]


# per task: the endpoints that use its models, each with the options that look inside the model
CAPABILITIES = {
    sentiment_task.TASK: {"/sentiment": ["explain"]},
    generator_task.TASK: {"/generate": ["logprobs"], "/generate_stream": ["logprobs"], "/score": []},
    translator_task.TASK: {"/translate": ["return_attention"]},
}


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
        "capabilities": CAPABILITIES[task],
    }


class Runtime:
    """The models of one worker, loaded at their precisions and warmed, and their batchers."""

    @stop_server_on_failure
    def __init__(self, settings: Settings, refs: ModelRefs) -> None:
        self.settings = settings
        torch.set_num_threads(settings.torch_threads)
        self.classifier = SentimentClassifier.load(refs.sentiment.path)
        self.generator = CharGenerator.load(refs.generator.path)
        translator_refs = {"de": refs.translator_de, "ko": refs.translator_ko}
        self.translators = {source: Translator.load(ref.path) for source, ref in translator_refs.items()}
        for source, translator in self.translators.items():
            if translator.config.source_lang != source:
                raise ValueError(f"the {source} translator's model translates from "
                                 f"{translator.config.source_lang!r}: check RNNSERVE_TRANSLATOR_"
                                 f"{source.upper()}_MODEL")
        self.model_cards = [
            model_card(refs.sentiment, sentiment_task.TASK, self.classifier.module),
            model_card(refs.generator, generator_task.TASK, self.generator.module),
            *(model_card(ref, translator_task.TASK, self.translators[source].module)
              for source, ref in translator_refs.items()),
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
                    "max_wait_s": settings.max_wait_ms / 1000, "max_queue": settings.max_queue,
                    "max_queue_wait_s": settings.max_queue_wait_s or None}
        self.sentiment_batcher = Batcher(
            refs.sentiment.tag.name, self._classify, **batching,
            inline_max_tokens=settings.inline_max_tokens,
            others_busy=lambda: any(loop.busy for loop in self._loops if loop is not self.sentiment_batcher))
        # a lone translation takes tens of milliseconds: always in the model's thread
        self.translate_batchers = {
            source: Batcher(ref.tag.name, self._translation_runner(source), **batching)
            for source, ref in translator_refs.items()}
        self.generation = GenerationLoop(refs.generator.tag.name, self.generator,
                                         max_active=settings.max_active_sequences,
                                         max_queue=settings.max_queue,
                                         deadline_s=settings.timeout_s,
                                         max_queue_wait_s=settings.max_queue_wait_s or None)
        config = self.generator.module.config
        self.sessions = Sessions(
            key_from(settings.state_key, bentoml_home()), str(refs.generator.tag),
            settings.state_ttl_s, settings.max_state_chars,
            {"parts": len(self.generator.module.init_state(1)), "num_layers": config.num_layers,
             "hidden_size": config.hidden_size, "vocab_size": config.vocab_size})
        # /score runs in the generation loop's thread, between its steps; its batches have a
        # metrics label of their own, so the generator's steps per batch keep their meaning
        self.score_batcher = Batcher(f"{refs.generator.tag.name}:score", self._score, **batching,
                                     executor=self.generation.executor)
        self._loops = [self.sentiment_batcher, *self.translate_batchers.values(), self.generation,
                       self.score_batcher]
        self.started = False
        # The models are loaded for good: keep them out of every future garbage collection,
        # whose full passes otherwise stall the worker ~150 ms every few seconds under load.
        gc.freeze()
        # Each request allocates a few hundred container objects, so at the default threshold
        # (700) the youngest generation is collected several times per batch: ~1.4% of a
        # worker's CPU under load. Ten times fewer collections, each over ~10k young objects.
        _, *older = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *older)
        self._gc_pauses = metrics.GCPauses()

    def _warm_up(self) -> None:
        """One call of every model, so the first request does not pay for lazy initialisation."""
        self.classifier.predict_proba([WARM_UP_TEXT])
        # a batch big enough for ProjectedLSTM builds its per-word table now, not on a request,
        # and TorchScript's profiling executor optimises its recurrence over the first calls
        for _ in range(3):
            self.classifier.predict_proba([WARM_UP_TEXT] * sentiment_task.PROJECTED_MIN_BATCH)
        self.generator.generate(WARM_UP_TEXT, max_tokens=2, seed=0)
        for translator in self.translators.values():
            translator.translate([WARM_UP_TEXT], beam_size=2)

    def start(self) -> None:
        for loop in self._loops:
            loop.start()
        self._gc_pauses.start()
        self.started = True
        log.info("models loaded and warmed; batching started")

    async def close(self) -> None:
        for loop in self._loops:
            await loop.close()
        await self._gc_pauses.close()

    def running(self) -> bool:
        return all(loop.running for loop in self._loops)

    # -- model calls, run by the batchers in their threads -------------------------------------

    def _classify(self, items: list[EncodedText | Explanation]) -> list[list[float] | list[list[float]]]:
        """Probabilities per text; per Explanation, those of each of its inputs (one model call)."""
        if not any(type(item) is Explanation for item in items):
            return self.classifier.predict_ids(items).tolist()  # (B, C)
        rows = [text for item in items
                for text in (item.inputs if type(item) is Explanation else (item,))]
        probabilities = self.classifier.predict_ids(rows).tolist()  # (rows, C)
        results, start = [], 0
        for item in items:
            if type(item) is Explanation:
                results.append(probabilities[start:start + len(item.inputs)])
                start += len(item.inputs)
            else:
                results.append(probabilities[start])
                start += 1
        return results

    def _score(self, texts: list[tuple[list[int], int]]) -> list[list[float | None]]:
        return self.generator.score_ids(texts)

    def _translation_runner(self, source: str):
        translator = self.translators[source]

        def translate(jobs: list[TranslationJob]) -> list[Translation]:
            hypotheses = translator.translate_ids([job.source_ids for job in jobs],
                                                  [job.beam_size for job in jobs],
                                                  [job.max_length for job in jobs])
            return [translator.to_translation(job.source_ids, hypothesis)
                    for job, hypothesis in zip(jobs, hypotheses, strict=True)]

        return translate

    # -- what the endpoints call -----------------------------------------------------------------

    def admit(self, endpoint: str) -> None:
        """Raise Overloaded when no model `endpoint` may use takes one more item now."""
        loops = {"sentiment": [self.sentiment_batcher], "translate": [*self.translate_batchers.values()],
                 "generate": [self.generation], "generate_stream": [self.generation],
                 "score": [self.score_batcher]}[endpoint]
        for loop in loops[1:]:
            if loop.refusal(1) is None:
                return
        loops[0].check_room(1)

    def generate(self, prompt: str, max_tokens: int, temperature: float, top_k: int,
                 seed: int | None, endpoint: str, logprobs: int, *, state: str | None,
                 return_state: bool, sealed: list[str]
                 ) -> AsyncIterator[tuple[list[str], list[dict]]]:
        """A generation's characters and their log-probability entries, continuing `state` and
        sealing its own (service.sessions)."""
        return session_stream(self.sessions, self.generation, prompt, max_tokens, temperature,
                              top_k, seed, endpoint, logprobs, state=state,
                              return_state=return_state, sealed=sealed)

    async def sentiment(self, texts: list[str]) -> list[SentimentResult]:
        self.sentiment_batcher.check_room(len(texts))  # before encoding: shedding must be cheap
        sequences = [self.classifier.encode(text) for text in texts]
        probabilities = await self.sentiment_batcher.submit(sequences, [len(s) for s in sequences])
        return [sentiment_result(p) for p in probabilities]

    async def explain_sentiment(self, texts: list[str]) -> list[SentimentResult]:
        """`sentiment`, with each text's tokens, trajectory and importance: one batcher item per
        text, whose 2 x tokens inputs run as one model call (their width)."""
        self.sentiment_batcher.check_room(len(texts))
        # the tokens the model reads: its normaliser's, cut to its max_tokens
        tokens = [self.classifier.tokens(text) for text in texts]
        items: list[EncodedText | Explanation] = []
        for text, words in zip(texts, tokens, strict=True):
            encoded = self.classifier.encode(text)
            items.append(Explanation(explanation_inputs(encoded)) if words else encoded)
        # an Explanation's longest input is its whole text (len(words)); it needs 2 x that many rows
        answers = await self.sentiment_batcher.submit(
            items, [len(words) or 1 for words in tokens],
            [len(item.inputs) if type(item) is Explanation else 1 for item in items])
        results = []
        for words, answer in zip(tokens, answers, strict=True):
            if not words:  # the empty text: the prior, nothing read
                results.append(sentiment_result(answer).model_copy(
                    update={"tokens": [], "trajectory": [], "importance": []}))
                continue
            trajectory, importance = explanation(answer)
            # the whole text is the last prefix: its row is the answer
            results.append(sentiment_result(answer[len(words) - 1]).model_copy(
                update={"tokens": words, "trajectory": trajectory, "importance": importance}))
        return results

    async def score(self, text: str, prompt: str) -> ScoreResult:
        self.score_batcher.check_room(1)
        job = self.generator.score_job(prompt, text)
        [surprisal] = await self.score_batcher.submit([job], [len(job[0])])
        known = [value for value in surprisal if value is not None]
        return ScoreResult(nats_per_char=sum(known) / len(known) if known else None,
                           surprisal=surprisal)

    async def translate(self, texts: list[str], source: str, beam_size: int, max_length: int | None,
                        return_attention: bool) -> list[TranslationResult]:
        translator = self.translators[source]
        self.translate_batchers[source].check_room(len(texts))
        jobs = []
        for text in texts:
            source_ids = translator.encode_source(text)
            limit = max_length if max_length is not None else min(
                translator.default_max_length(source_ids), self.settings.max_translation_length)
            jobs.append(TranslationJob(source_ids, beam_size, limit))
        translations = await self.translate_batchers[source].submit(
            jobs, [len(job.source_ids) for job in jobs], [beam_size] * len(jobs))
        return [translation_result(t, return_attention) for t in translations]


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
