"""The playground: a page that shows what the models' memory does, token by token.

Static files from service/static/playground (HTML, CSS, plain JavaScript that draws SVG), served
as they are at /playground by the service itself: no build step, no framework, no request to
any other host. The Content-Security-Policy below says so to the browser, which then refuses
anything else: a script or style from elsewhere, an inline script, a request to another origin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.staticfiles import StaticFiles

PATH = "/playground"
DIRECTORY = Path(__file__).resolve().parent / "static" / "playground"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
           (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer")]


class SecurityHeaders:
    """ASGI middleware: the playground's answers carry HEADERS."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def app() -> SecurityHeaders:
    """The playground's files, index.html at its root."""
    return SecurityHeaders(StaticFiles(directory=DIRECTORY, html=True))
