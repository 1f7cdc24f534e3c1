"""Everything rnn-serve changes in how BentoML 1.4 and uvicorn carry requests, in one place.

The service itself (service/app.py) is a plain BentoML service. What makes it fast and hard to
break under many clients sits here, installed from the settings by two calls:

- `install(settings)`, when service.app is imported (in the supervisor and in every worker),
  before BentoML builds the worker's server: the process-level patches.
- `wrap(service, settings, direct=..., admit=...)`, after the service class is declared: the
  ASGI middleware, innermost last.

docs/transport.md has the table: what each piece patches, why, what it bought, the versions it
was written for, and when it can go. Each private BentoML or uvicorn attribute a piece relies on
is listed in `REQUIRED` and checked by `check_compatible` at start-up: a version where one is
missing stops the server with a message naming it, instead of misbehaving.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterable
from typing import Any

from service.config import Settings

log = logging.getLogger(__name__)

WRITTEN_FOR = {"bentoml": "1.4.40", "uvicorn": "0.55.0", "httptools": "0.9.0"}

# (module, attribute path, the piece that needs it)
REQUIRED = (
    ("bentoml._internal.server.http.traffic", "TimeoutMiddleware.__call__", "timeout.py"),
    ("bentoml._internal.server.http.traffic", "TimeoutMiddleware._set_timer_out", "timeout.py"),
    ("_bentoml_impl.worker.service", "main", "sockets.py, balance.py (worker argv --fd, --worker-id)"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.connection_made", "writes.py, limits.py"),
    ("uvicorn.protocols.http.h11_impl", "H11Protocol.connection_made", "writes.py"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.connection_lost", "limits.py"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.data_received", "limits.py"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_message_begin", "limits.py"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_url", "limits.py"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_header", "limits.py"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_headers_complete", "limits.py"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_message_complete", "limits.py"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.send_400_response", "limits.py"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol.on_response_complete", "limits.py"),
    ("uvicorn.protocols.http.httptools_impl", "RequestResponseCycle.run_asgi", "limits.py"),
    ("bentoml._internal.utils.circus", "Arbiter.__init__", "control.py"),
    ("_bentoml_sdk.method", "APIMethod", "direct.py (api.func, api.input_spec, api.output_spec)"),
)


class IncompatibleVersion(RuntimeError):
    pass


def _resolve(module: str, path: str) -> Any:
    value: Any = importlib.import_module(module)
    for name in path.split("."):
        value = getattr(value, name)
    return value


def check_compatible(required: Iterable[tuple[str, str, str]] = REQUIRED) -> None:
    """Raise IncompatibleVersion naming every private attribute the transport needs and the
    installed BentoML or uvicorn lacks."""
    missing = []
    for module, path, piece in required:
        try:
            _resolve(module, path)
        except (ImportError, AttributeError):
            missing.append(f"{module}.{path} (for service/transport/{piece})")
    if missing:
        installed = ", ".join(f"{name} {version(name)}" for name in WRITTEN_FOR)
        written = ", ".join(f"{name} {v}" for name, v in WRITTEN_FOR.items())
        raise IncompatibleVersion(
            f"service/transport was written for {written}; installed: {installed}. Missing: "
            f"{'; '.join(missing)}. Review docs/transport.md for what each piece patches.")


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def install(settings: Settings) -> None:
    """The process-level patches, from `settings`. Idempotent."""
    from service.transport import control, limits, sockets, timeout, writes

    check_compatible()
    control.use_private_endpoints()
    timeout.fix_bentoml_timeout_middleware()
    if settings.listen == "per-worker":
        sockets.balance_connections(settings.worker_count)  # in a worker, before BentoML wraps its socket
    if settings.coalesce_writes == "on":
        writes.coalesce_http_writes()
    limits.limit_connections(limits.Limits(
        max_connections=min(settings.max_connections, limits.descriptor_budget()),
        header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
        keepalive_timeout_s=settings.keepalive_timeout_s, max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers, max_body_bytes=settings.max_body_bytes))


def wrap(service: Any, settings: Settings, direct: Iterable[str],
         admit: Callable[[str], None]) -> None:
    """Add the transport's ASGI middleware to `service` (after any added before: inside them).

    `direct`: the endpoints DirectEndpoints answers itself; `admit(endpoint)` raises Overloaded
    when that endpoint's model has no room, before its body is read.
    """
    from service.transport.balance import ConnectionBalancer, worker_counts
    from service.transport.direct import DirectEndpoints, EarlyShedding, JsonBodies
    from service.transport.limits import BodyLimits, answer_early

    # BentoML works out the media type of an answer that is a list (a root model) from its JSON
    # schema, which pydantic rebuilds for every response; these answers are always JSON.
    for api in service.apis.values():
        if getattr(api.output_spec, "media_type", None) is None and "root" in getattr(
                api.output_spec, "model_fields", {}):
            api.output_spec.media_type = "application/json"
    service.add_asgi_middleware(BodyLimits, max_body_bytes=settings.max_body_bytes)
    workers = settings.worker_count
    service.add_asgi_middleware(ConnectionBalancer, counts=lambda: (
        worker_counts(workers) if settings.listen == "per-worker" and settings.rebalance == "on" else None))
    service.add_asgi_middleware(DirectEndpoints, apis={f"/{name}": service.apis[name] for name in direct},
                                server_header=f"BentoML Service/{service.name}", admit=admit)
    service.add_asgi_middleware(JsonBodies, paths={f"/{name}" for name in service.apis})
    answer_early(EarlyShedding({f"/{name}": name for name in direct}, admit,
                               server_header=f"BentoML Service/{service.name}", token=settings.auth_token))
