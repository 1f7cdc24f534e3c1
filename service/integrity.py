"""Refuse to serve a damaged model, and never restart a worker that cannot load its models.

Left to BentoML, a worker that fails to load a model exits and its supervisor (circus) starts it
again every 10 s for good, while /readyz never answers. Two guards end that:

1. The served models' files are verified once in the supervisor, from an @bentoml.on_deployment
   hook, which `bentoml serve` runs before it spawns any worker (verify_served_models). A
   BentoMLException there ends `bentoml serve` with exit status 1 and one line:
   `Error: [serve] `serve` failed: model <tag> is damaged: <file>: <what is wrong>`.
   Standard library checks only (models.integrity): this process must not import torch.
2. What only a full load can find (config and weights that disagree, a file damaged after
   start-up and read by a restarted worker, a bad setting) fails Runtime's start in a worker:
   `stop_server_on_failure` logs it in one line and signals the supervisor (SIGUSR1, which
   circus leaves alone), whose handler stops the server as SIGTERM would; the process then exits
   with status 1. Both ends are armed only under a supervisor that ran the hook.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import ParamSpec

from bentoml.exceptions import BentoMLException
from bentoml.models import BentoModel
from circus.sighandler import SysHandler

from models.integrity import CHECKSUMS_FILE, ArtifactError, verify_model

log = logging.getLogger(__name__)

P = ParamSpec("P")
# Set by the supervisor for its workers (circus copies its environment): not a setting.
SUPERVISOR_PID_ENV = "RNNSERVE_SUPERVISOR_PID"
WORKER_FAILED_SIGNAL = signal.SIGUSR1
EXIT_STATUS = 1
_worker_failed = False


def verify_served_models(models: Iterable[BentoModel]) -> None:
    """In the supervisor, before any worker starts: raise BentoMLException (which stops `bentoml
    serve`) when any model's files are damaged, and arm the stop on a worker's failed start."""
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
    # signal handlers can only be set from the main thread, and only if nobody else uses this one
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(WORKER_FAILED_SIGNAL) == signal.SIG_DFL):
        signal.signal(WORKER_FAILED_SIGNAL, stop_after_worker_failure)
        atexit.register(exit_status_after_worker_failure)
        os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())


def stop_after_worker_failure(signum: int, frame: FrameType | None) -> None:
    """The supervisor's SIGUSR1 handler: stop the server, as circus does on SIGTERM."""
    global _worker_failed
    stop = signal.getsignal(signal.SIGTERM)
    if _worker_failed or not isinstance(getattr(stop, "__self__", None), SysHandler):
        return  # already stopping, or no circus arbiter handles this process's signals
    _worker_failed = True
    stop(signal.SIGTERM, frame)


def exit_status_after_worker_failure() -> None:
    """At the supervisor's exit: status 1 when a worker's failed start stopped it (a stop on
    SIGTERM exits 0, and nothing else in `bentoml serve` can set the status)."""
    if _worker_failed:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_STATUS)


def stop_server_on_failure(start: Callable[P, None]) -> Callable[P, None]:
    """For what a worker runs to start: an exception stops the whole server, not only this
    worker, so a model that cannot be loaded is never retried every few seconds."""

    @functools.wraps(start)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            start(*args, **kwargs)
        except Exception as err:
            supervisor = os.getppid()
            if os.environ.get(SUPERVISOR_PID_ENV) != str(supervisor):
                raise  # not a worker of a supervisor that verify_served_models armed
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            log.critical("this worker cannot start, stopping the server: %s", reason)
            os.kill(supervisor, WORKER_FAILED_SIGNAL)
            if not isinstance(err, ArtifactError):
                raise  # a bug or a resource running out: BentoML logs its traceback
            logging.shutdown()  # the line above is the whole story: no traceback after it
            os._exit(EXIT_STATUS)

    return guarded
