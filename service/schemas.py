"""Request and response bodies of the HTTP contract (docs/serving.md).

Requests are pydantic models whose limits come from Settings, so BentoML rejects a bad request
before it reaches a model, with a 400 whose JSON names the field (`loc`) and the limit (`msg`).
Unknown fields are rejected too: a misspelt option must not be silently ignored. Types are
strict: "5" is not an integer and true is not 1.
(No `from __future__ import annotations` here: the limits are evaluated when a model is built.)
"""

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from models.names import LABELS
from models.text import NORMALIZERS, sentiment_tokens
from service.config import Settings

Source = Literal["de", "ko"]
# Limits every model honours whatever its vocabulary: the schemas are built in BentoML's
# supervisor, which loads no model. docs/serving.md gives each range and why.
MAX_BEAM_SIZE = 8
MAX_SEED = 2**63 - 1  # a signed 64-bit integer, which every JSON client can send
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 2**31 - 1  # a signed 32-bit integer; k at least the vocabulary means all of it
MAX_LOGPROBS = 5  # alternatives per generated character
STRICT = ConfigDict(extra="forbid", strict=True)


def _omitted_unless_asked(value: object) -> bool:
    return value is None


class SentimentResult(BaseModel):
    label: Literal["negative", "positive"]
    score: float = Field(description="probability of the label")
    probabilities: dict[str, float] = Field(description=f"probability of each of {LABELS}")
    # only with explain: true; absent otherwise
    tokens: list[str] | None = Field(
        None, exclude_if=_omitted_unless_asked,
        description="with explain: the words the model read, after normalisation (none for an "
                    "empty text, which gets the model's prior)")
    trajectory: list[float] | None = Field(
        None, exclude_if=_omitted_unless_asked,
        description="with explain: P(positive) after each token, the answer for the text read so "
                    "far; the last equals probabilities.positive")
    importance: list[float] | None = Field(
        None, exclude_if=_omitted_unless_asked,
        description="with explain: per token, P(positive) of the whole text minus P(positive) "
                    "with that token alone left out (occlusion); > 0 pulls towards positive")


class Alternative(BaseModel):
    char: str
    logprob: float = Field(description="natural log of its probability")


class CharLogProb(BaseModel):
    char: str = Field(description="a generated character")
    logprob: float = Field(description="natural log of its probability under the distribution "
                                       "it was sampled from (after temperature and top-k)")
    top: list[Alternative] = Field(description="the likeliest characters of that distribution, "
                                               "most likely first: up to `logprobs` of them, "
                                               "those top_k allowed")


def _omitted_unless_asked(value: object) -> bool:
    return value is None


class GenerateResult(BaseModel):
    text: str = Field(description="the continuation only, without the prompt")
    tokens: int = Field(description="characters generated")
    # only with logprobs > 0; absent otherwise
    logprobs: list[CharLogProb] | None = Field(
        None, exclude_if=_omitted_unless_asked,
        description="with logprobs > 0: one entry per generated character, in order")
    state: str | None = Field(None, exclude_if=_omitted_unless_asked,
                              description="only with return_state: continues this generation")


class ScoreResult(BaseModel):
    nats_per_char: float | None = Field(
        description="the mean surprisal of the text's characters the model can produce")
    surprisal: list[float | None] = Field(
        description="per character of the text, -ln p(character | prompt and the text before "
                    "it) at temperature 1 and top_k 0; null for a character outside the model's "
                    "vocabulary (it can never produce it)")


class TranslationResult(BaseModel):
    translation: str
    # only with return_attention; absent otherwise
    source_tokens: list[str] | None = Field(None, exclude_if=_omitted_unless_asked)
    target_tokens: list[str] | None = Field(None, exclude_if=_omitted_unless_asked)
    attention: list[list[float]] | None = Field(
        None, exclude_if=_omitted_unless_asked,
        description="target x source weights; each row sums to 1")


@dataclass(frozen=True)
class RequestModels:
    sentiment: type[BaseModel]
    generate: type[BaseModel]
    translate: type[BaseModel]
    score: type[BaseModel]


def request_models(settings: Settings) -> RequestModels:
    """The request bodies with `settings`' limits built in."""

    def text_list(max_chars: int) -> object:
        text = Annotated[str, StringConstraints(max_length=max_chars)]
        return Annotated[list[text], Field(
            min_length=1, max_length=settings.max_texts,
            description=f"1..{settings.max_texts} texts of at most {max_chars} characters each")]

    SentimentTexts = text_list(settings.max_sentiment_chars)  # noqa: N806
    TranslationTexts = text_list(settings.max_translation_chars)  # noqa: N806

    class SentimentRequest(BaseModel):
        model_config = STRICT
        texts: SentimentTexts  # type: ignore[valid-type]
        explain: bool = Field(
            False, description="also return per text its tokens, the trajectory of P(positive) "
            "over them and each token's importance; costs a batch of 2 x tokens texts per text, so "
            f"at most {settings.max_explain_texts} texts of at most "
            f"{settings.max_explain_tokens} tokens each")

        @field_validator("explain")
        @classmethod
        def explain_within_limits(cls, explain: bool, info: ValidationInfo) -> bool:
            texts = info.data.get("texts")
            if not explain or texts is None:
                return explain
            if len(texts) > settings.max_explain_texts:
                raise ValueError(f"with explain, at most {settings.max_explain_texts} texts "
                                 f"(RNNSERVE_MAX_EXPLAIN_TEXTS); got {len(texts)}")
            for number, text in enumerate(texts):
                # the supervisor has no model to ask which normaliser it reads with: the most
                # tokens any of them makes bounds the cost whichever model serves
                tokens = max(len(sentiment_tokens(text, version)) for version in NORMALIZERS)
                if tokens > settings.max_explain_tokens:
                    raise ValueError(f"with explain, at most {settings.max_explain_tokens} tokens "
                                     f"per text (RNNSERVE_MAX_EXPLAIN_TOKENS); texts.{number} has "
                                     f"{tokens}")
            return explain

    class GenerateRequest(BaseModel):
        model_config = STRICT
        prompt: str = Field(max_length=settings.max_prompt_chars,
                            description='text to continue; "" starts as if after a blank line')
        max_tokens: int = Field(
            200, ge=1, le=settings.max_tokens,
            description=f"characters to generate, 1..{settings.max_tokens} (RNNSERVE_MAX_TOKENS): "
                        "each costs one step of the model, and a request that cannot finish "
                        "before the timeout is refused with 429")
        temperature: float = Field(
            0.8, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False,
            description=f"0..{MAX_TEMPERATURE:g}: divides the logits before sampling; lower is "
                        "safer, 0 (or a value so small the division overflows) always takes the "
                        f"likeliest character; above {MAX_TEMPERATURE:g} the text is all but "
                        "uniform noise")
        top_k: int = Field(
            0, ge=0, le=MAX_TOP_K,
            description=f"0..{MAX_TOP_K}: sample from the k likeliest characters; 0, or k at "
                        "least the model's vocabulary, samples from all of them")
        seed: int | None = Field(
            None, ge=0, le=MAX_SEED,
            description=f"0..{MAX_SEED} (a signed 64-bit integer): the same seed gives the same "
                        "text, alone or beside other requests; null = random, or with `state`, "
                        "the sampler goes on where it stopped")
        return_state: bool = Field(
            False, description="also answer `state`, a token that continues this generation later "
                               "(in the stream: an `event: state` before `event: end`)")
        state: str | None = Field(
            None, max_length=settings.max_state_chars,
            description="a `state` an earlier answer returned: go on from where it stopped, "
                        "reading `prompt` first (\"\": nothing); 400 if not valid, 409 if made by "
                        "another model, 410 if expired")
        logprobs: int = Field(0, ge=0, le=MAX_LOGPROBS,
                              description=f"0..{MAX_LOGPROBS}: 0 off; k: also each generated "
                                          "character's log-probability under the distribution "
                                          "it was sampled from, and the k likeliest alternatives")

    class TranslateRequest(BaseModel):
        model_config = STRICT
        texts: TranslationTexts  # type: ignore[valid-type]
        source: Source = "de"
        beam_size: int = Field(
            1, ge=1, le=MAX_BEAM_SIZE,
            description=f"1..{MAX_BEAM_SIZE}: hypotheses kept per text (1 = greedy); each costs "
                        "a row of the model batch, and past a few the translations gain nothing")
        max_length: int | None = Field(
            None, ge=1, le=settings.max_translation_length,
            description=f"1..{settings.max_translation_length} (RNNSERVE_MAX_TRANSLATION_LENGTH): "
                        "most target pieces; null: 2 x source pieces + 10, capped the same")
        return_attention: bool = False

    class ScoreRequest(BaseModel):
        model_config = STRICT
        text: str = Field(min_length=1, max_length=settings.max_prompt_chars,
                          description="the characters to score")
        prompt: str = Field("", max_length=settings.max_prompt_chars,
                            description='what comes before the text; "" as in /generate')

    return RequestModels(SentimentRequest, GenerateRequest, TranslateRequest, ScoreRequest)
