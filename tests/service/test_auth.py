"""service.auth.BearerAuth: 401 without the token, public paths open, the token compared whole."""

from __future__ import annotations

import asyncio
import json

from service.auth import BearerAuth
from service.config import Settings


async def ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def status_of(path: str, authorization: bytes | None, public=("/livez", "/metrics")) -> tuple[int, list]:
    app = BearerAuth(ok, token="abc", public=public)
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    headers = [(b"authorization", authorization)] if authorization is not None else []
    asyncio.run(app({"type": "http", "method": "POST", "path": path, "headers": headers}, None, send))
    return sent[0]["status"], sent


def test_the_token_is_needed_and_must_match_whole():
    assert status_of("/sentiment", b"Bearer abc")[0] == 200
    for wrong in (None, b"", b"Bearer ab", b"Bearer abcd", b"bearer abc", b"abc"):
        status, sent = status_of("/sentiment", wrong)
        assert status == 401, wrong
    assert (b"www-authenticate", b'Bearer realm="rnn-serve"') in sent[0]["headers"]
    assert "RNNSERVE_AUTH_TOKEN" in json.loads(sent[1]["body"])["error"]


def test_public_paths_and_only_they_stay_open():
    assert status_of("/livez", None)[0] == 200
    assert status_of("/metrics", None)[0] == 200
    assert status_of("/livez-not", None)[0] == 401
    assert status_of("/models", None)[0] == 401


def test_the_public_groups_come_from_the_settings():
    assert Settings().public_paths == {"/livez", "/readyz", "/healthz", "/metrics"}
    assert Settings(auth_public="").public_paths == frozenset()
    assert "/docs.json" in Settings(auth_public="health,docs").public_paths
