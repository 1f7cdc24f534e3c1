"""Fixtures of the service tests: one real server per test module that asks for it, the pipelines
it serves loaded in-process as references, and the tiny generator of each cell."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import torch

from models.generator import CharGenerator
from models.quantize import with_precision
from models.sentiment import SentimentClassifier
from service.config import Settings

from support.server import running_server
from support.tiny_models import make_tiny_generator

# In-process references at the precision the service gives each task's models by default.
PRECISIONS = Settings().precisions


@pytest.fixture(scope="module")
def server(tiny_shipped_dir, tmp_path_factory) -> Iterator[str]:
    """The URL of one `bentoml serve` for the test module, serving the four tiny random models
    (a module that needs other models or settings defines its own `server`)."""
    with running_server(tiny_shipped_dir, tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def served_classifier(tiny_shipped_dir) -> SentimentClassifier:
    loaded = SentimentClassifier.load(tiny_shipped_dir / "sentiment-rnn")
    return SentimentClassifier(with_precision(loaded.module, PRECISIONS["sentiment"]), loaded.vocab)


@pytest.fixture(scope="module")
def served_generator(tiny_shipped_dir) -> CharGenerator:
    loaded = CharGenerator.load(tiny_shipped_dir / "char-generator")
    return CharGenerator(with_precision(loaded.module, PRECISIONS["generator"]), loaded.vocab)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """As the service runs (RNNSERVE_TORCH_THREADS=1): two threads each wanting every core crawl.
    A module asks for it with `pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["gru", "lstm"])
def generator(request) -> CharGenerator:
    return make_tiny_generator(cell=request.param)
