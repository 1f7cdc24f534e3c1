"""service.schemas: the request limits follow the settings; replies omit what was not asked for."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.schemas import TranslationResult, request_models


def test_limits_come_from_the_settings():
    requests = request_models(Settings(max_texts=2, max_sentiment_chars=5, max_prompt_chars=3,
                                       max_tokens=10, max_translation_length=7))
    requests.sentiment.model_validate({"texts": ["12345", ""]})
    with pytest.raises(ValidationError, match="at most 2 items"):
        requests.sentiment.model_validate({"texts": ["a", "b", "c"]})
    with pytest.raises(ValidationError, match="at most 5 characters"):
        requests.sentiment.model_validate({"texts": ["123456"]})
    with pytest.raises(ValidationError, match="at most 3 characters"):
        requests.generate.model_validate({"prompt": "abcd"})
    with pytest.raises(ValidationError, match="less than or equal to 10"):
        requests.generate.model_validate({"prompt": "a", "max_tokens": 11})
    with pytest.raises(ValidationError, match="less than or equal to 7"):
        requests.translate.model_validate({"texts": ["a"], "max_length": 8})


def test_defaults_follow_the_contract():
    requests = request_models(Settings())
    generate = requests.generate.model_validate({"prompt": ""})
    assert (generate.max_tokens, generate.temperature, generate.top_k, generate.seed) == (200, 0.8, 0, None)
    translate = requests.translate.model_validate({"texts": ["x"]})
    assert (translate.source, translate.beam_size, translate.max_length, translate.return_attention) == (
        "de", 1, None, False)


def test_attention_fields_appear_only_when_filled():
    assert TranslationResult(translation="hi").model_dump() == {"translation": "hi"}
    full = TranslationResult(translation="hi", source_tokens=["a", "</s>"], target_tokens=["hi", "</s>"],
                             attention=[[0.5, 0.5], [1.0, 0.0]])
    assert set(full.model_dump()) == {"translation", "source_tokens", "target_tokens", "attention"}
