"""Refuse to serve a damaged model: every served artifact is verified before any worker starts.

Verified in a worker alone, a damaged model would fail the worker's start, and BentoML's
supervisor (circus) would start it again every 10 s for good, with /readyz never answering.
So the served models' files are checked once in the supervisor, from an @bentoml.on_deployment
hook, which `bentoml serve` runs before it spawns workers: a BentoMLException there ends
`bentoml serve` with exit status 1 and one line, `Error: [cli] `serve` failed: model <tag> is
damaged: <file>: <what is wrong>`. The workers still verify what they load (models.artifact).

Standard library checks only (models.integrity): this process must not import torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from bentoml.exceptions import BentoMLException
from bentoml.models import BentoModel

from models.integrity import CHECKSUMS_FILE, ArtifactError, verify_model

log = logging.getLogger(__name__)


def verify_served_models(models: Iterable[BentoModel]) -> None:
    """Raise BentoMLException, which stops `bentoml serve`, when any model's files are damaged."""
    for ref in models:
        model = ref.resolve()
        try:
            verified = verify_model(str(model.tag), model.path)
        except ArtifactError as err:
            raise BentoMLException(str(err)) from None
        if verified:
            log.info("model %s: every file matches its recorded sha256", model.tag)
        else:
            log.warning("model %s has no %s (stored before checksums were recorded): only its "
                        "weights could be checked; `python -m training.store record-checksums %s` "
                        "records them", model.tag, CHECKSUMS_FILE, model.tag)
