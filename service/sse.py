"""Server-Sent Events for /generate_stream (the WHATWG HTML "Server-sent events" format).

Each piece of text is one event of the default type ("message"), its lines in `data:` lines: a
client joins an event's data lines with "\\n", so a newline inside a piece survives. The stream
ends with exactly one of `event: end` (data: the characters sent) or `event: error` (data: a JSON
reason), so a client never mistakes a broken stream for a complete one. SSE reads a carriage
return as a line break as well; the text arrives with "\\n" in its place (the shipped
generator's vocabulary has none).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from bentoml.exceptions import BentoMLException

from service import errors, metrics

log = logging.getLogger(__name__)

LINE_BREAK = re.compile(r"\r\n|\r|\n")
# what a failure of the server's own says, as BentoML's 500 body does: the details are in the log
INTERNAL_REASON = "An unexpected error has occurred, please check the server log."


def message(text: str) -> str:
    """One event carrying `text`: `data: line` per line, then the blank line that ends it."""
    return "".join(f"data: {line}\n" for line in LINE_BREAK.split(text)) + "\n"


def data(content: object) -> str:
    """One event carrying `content` as JSON: one data line (JSON escapes newlines)."""
    return f"data: {json.dumps(content, ensure_ascii=False, separators=(',', ':'))}\n\n"


def end(tokens: int) -> str:
    return event("end", {"tokens": tokens})


def error(reason: str, status: int) -> str:
    """The last event of a stream that failed: the reason and the HTTP status it would have had."""
    return event("error", {"error": reason, "status": status})


def event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def event_stream(pieces: AsyncIterator[tuple[list[str], list[dict]]], response: Any,
                       endpoint: str, with_log_probs: bool = False,
                       sealed: list[str] = ()) -> AsyncIterator[str]:
    """The events of a generation whose characters `pieces` yields with their log-probability
    entries, for BentoML to stream: each piece's text in `data:` lines, or, `with_log_probs`,
    one JSON line {"text", "logprobs"} per piece (as /generate answers them).

    BentoML waits for the first event before it answers, so an error before it still sets the
    answer: a client's error or an overload keeps its status and JSON body, as /generate
    answers them, set on `response` (the request context's), without the traceback BentoML
    would log per request; a fault of the server's own is raised for BentoML's 500. After the
    first event the status is 200 for good: a failure is the last event, and counted here.
    A state token `pieces` left in `sealed` goes out as `event: state` just before the end.
    """
    sent = 0
    try:
        async for piece, log_probs in pieces:
            sent += len(piece)
            text = "".join(piece)
            yield data({"text": text, "logprobs": log_probs}) if with_log_probs else message(text)
    except Exception as failure:
        status = failure.error_code.value if isinstance(failure, BentoMLException) else 500
        if sent:
            if status >= 500:
                log.error("%s failed after %d characters", endpoint, sent, exc_info=True)
            errors.count(endpoint, metrics.error_kind(status) or "internal")
            yield error(str(failure) if status < 500 else INTERNAL_REASON, status)
            return
        if status >= 500:
            raise  # BentoML answers 500 (counted by errors.ErrorCounting)
        if isinstance(failure, errors.Overloaded):
            errors.shed_log.warning("shed a request to /%s: %s", endpoint, failure)
            response.headers["retry-after"] = str(errors.RETRY_AFTER_S)
        response.status_code = status
        response.headers["content-type"] = "application/json"
        yield json.dumps([{"error": str(failure)}], ensure_ascii=False)
        return
    for token in sealed:
        yield event("state", {"state": token})
    yield end(sent)
