"""Generation sessions: a generation's final state handed to the client as a signed token.

The client holds the state, not the server: any worker of any replica that has the same key
(RNNSERVE_STATE_KEY) continues it, after any restart, with no store to share, size or expire
(docs/serving.md, "Sessions", argues this against a shared store and sticky routing).

Token: base64url (no padding) of version (1 byte) | expiry (unix seconds, 8) | model tag length
(1) | model tag | payload (models.sequence_state) | HMAC-SHA256 (32) over all that precedes it.
The MAC is checked first, so a forged, altered or truncated token is refused (400) before any of
it is read; then the model tag (409, naming both) and the expiry (410). A token is a value:
continuing it twice forks the session, and each continuation is served on its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import struct
import tempfile
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

from bentoml.exceptions import BentoMLException

from models.sequence_state import SequenceState, pack, unpack
from service import metrics

if TYPE_CHECKING:
    from service.generation import GenerationLoop

TOKEN_VERSION = 1
KEY_FILE = "rnnserve_state_key"  # under $BENTOML_HOME when RNNSERVE_STATE_KEY is unset
_PREFIX = struct.Struct("<BQB")  # version, expiry, tag length
_MAC_BYTES = 32


class StateRefused(BentoMLException):
    """A `state` the service will not continue: 400 (not a valid token), 409 (another model),
    410 (expired)."""

    def __init__(self, message: str, status: HTTPStatus):
        super().__init__(f"state: {message}", error_code=status)


def key_from(setting: str, home: str | Path) -> bytes:
    """The signing key: RNNSERVE_STATE_KEY when set, else one made once in `home`.

    The file is written whole under another name, then linked into place: when several workers
    start at once, one link wins and every worker reads the same key.
    """
    if setting:
        return setting.encode()
    path = Path(home) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{KEY_FILE}.")
        try:
            with os.fdopen(descriptor, "w") as file:  # mkstemp creates it 0600
                file.write(secrets.token_hex(32))
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    return path.read_text().strip().encode()


def bentoml_home() -> str:
    return os.environ.get("BENTOML_HOME") or os.path.expanduser("~/bentoml")


class Sessions:
    """Seals finished generations into tokens and opens tokens again, for one model."""

    def __init__(self, key: bytes, model_tag: str, lifetime_s: float, max_chars: int,
                 shape: dict[str, int]):
        self._key = key
        self.model_tag = model_tag
        self._tag = model_tag.encode()
        if len(self._tag) > 255:
            raise ValueError(f"model tag {model_tag!r} longer than 255 bytes")
        self.lifetime_s = lifetime_s
        self.max_chars = max_chars
        self._shape = shape  # parts, num_layers, hidden_size, vocab_size (models.sequence_state)

    def seal(self, sequence: SequenceState, now: float | None = None) -> str:
        payload = pack(sequence)
        expiry = int((time.time() if now is None else now) + self.lifetime_s)
        body = _PREFIX.pack(TOKEN_VERSION, expiry, len(self._tag)) + self._tag + payload
        token = base64.urlsafe_b64encode(body + self._mac(body)).rstrip(b"=").decode()
        if len(token) > self.max_chars:
            raise RuntimeError(f"a state of {len(token)} characters is over RNNSERVE_MAX_STATE_CHARS "
                               f"({self.max_chars}): raise it for this model")
        metrics.state_bytes.observe(len(token))
        return token

    def open(self, token: str, now: float | None = None) -> SequenceState:
        """The sequence in `token`; StateRefused (counted) when it cannot be continued here."""
        try:
            sequence = self._open(token, time.time() if now is None else now)
        except StateRefused as refusal:
            event = "expired" if refusal.error_code == HTTPStatus.GONE else "refused"
            metrics.sessions.labels(event).inc()
            raise
        metrics.sessions.labels("continued").inc()
        return sequence

    def _open(self, token: str, now: float) -> SequenceState:
        invalid = HTTPStatus.BAD_REQUEST
        if len(token) > self.max_chars:
            raise StateRefused(f"{len(token)} characters, over the {self.max_chars} a state may "
                               "have (RNNSERVE_MAX_STATE_CHARS)", invalid)
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise StateRefused("not a state this service issued (not base64url)", invalid) from None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) < _PREFIX.size + _MAC_BYTES or not hmac.compare_digest(mac, self._mac(body)):
            raise StateRefused("not a state this service issued, or altered (its signature does "
                               "not match this service's key)", invalid)
        version, expiry, tag_length = _PREFIX.unpack_from(body)
        if version != TOKEN_VERSION:
            raise StateRefused(f"token version {version}, this service reads {TOKEN_VERSION}", invalid)
        tag = body[_PREFIX.size:_PREFIX.size + tag_length].decode(errors="replace")
        if tag != self.model_tag:
            raise StateRefused(f"made by model {tag}, this service runs {self.model_tag}: start a "
                               "new session", HTTPStatus.CONFLICT)
        if now > expiry:
            raise StateRefused(f"expired {now - expiry:.0f} s ago (a state lives "
                               f"RNNSERVE_STATE_TTL_S = {self.lifetime_s:g} s): start a new "
                               "session", HTTPStatus.GONE)
        try:
            return unpack(body[_PREFIX.size + tag_length:], **self._shape)
        except ValueError as error:
            raise StateRefused(f"does not fit model {self.model_tag}: {error}", invalid) from None

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()


async def session_stream(sessions: Sessions, loop: GenerationLoop, prompt: str, max_tokens: int,
                         temperature: float, top_k: int, seed: int | None, endpoint: str,
                         logprobs: int = 0, *, state: str | None, return_state: bool,
                         sealed: list[str]) -> AsyncIterator[tuple[list[str], list[dict]]]:
    """loop.stream_with_log_probs, continuing from `state` when given; with `return_state`, the
    final state's token is appended to `sealed` once the last character is out. A refused state
    raises as the stream's first item, so /generate_stream still answers it with its status."""
    resume = sessions.open(state) if state is not None else None
    finals: list[SequenceState] = []
    async for piece in loop.stream_with_log_probs(
            prompt, max_tokens, temperature, top_k, seed, endpoint, logprobs, resume=resume,
            state_out=finals.append if return_state else None):
        yield piece
    if return_state:
        if resume is None:
            metrics.sessions.labels("started").inc()
        sealed.append(sessions.seal(finals[0]))
