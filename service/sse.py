"""Server-Sent Events framing for /generate_stream (the WHATWG HTML "Server-sent events" format).

Each piece of text is one event of the default type ("message"), its lines in `data:` lines: a
client joins an event's data lines with "\\n", so a newline inside a piece survives. The stream
ends with exactly one of `event: end` (data: the characters sent) or `event: error` (data: a JSON
reason), so a client never mistakes a broken stream for a complete one. SSE reads a carriage
return as a line break as well; the text arrives with "\\n" in its place (the shipped
generator's vocabulary has none).
"""

from __future__ import annotations

import json
import re

LINE_BREAK = re.compile(r"\r\n|\r|\n")
# what a failure of the server's own says, as BentoML's 500 body does: the details are in the log
INTERNAL_REASON = "An unexpected error has occurred, please check the server log."


def message(text: str) -> str:
    """One event carrying `text`: `data: line` per line, then the blank line that ends it."""
    return "".join(f"data: {line}\n" for line in LINE_BREAK.split(text)) + "\n"


def end(tokens: int) -> str:
    return event("end", {"tokens": tokens})


def error(reason: str, status: int) -> str:
    """The last event of a stream that failed: the reason and the HTTP status it would have had."""
    return event("error", {"error": reason, "status": status})


def event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"
