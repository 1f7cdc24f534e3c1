"""Text normalisation shared by training and serving.

SST-2 is lowercased and tokenised Penn-Treebank style ("does n't", "it 's", "( and )").
User text arrives raw: mixed case, contractions glued on, punctuation touching words.
`sentiment_tokens` maps both onto the same token stream, so the vocabulary built
from the training files sees what a user's sentence becomes.
"""

from __future__ import annotations

import re
import unicodedata

# stsa.binary escapes characters that GLUE and users write plainly.
_PTB_ESCAPES = {
    "-lrb-": "(",
    "-rrb-": ")",
    "-lsb-": "[",
    "-rsb-": "]",
    "-lcb-": "{",
    "-rcb-": "}",
    "\\/": "/",
    "\\*": "*",
}
_ESCAPE_RE = re.compile("|".join(re.escape(k) for k in _PTB_ESCAPES))

# Curly quotes and dashes that users paste; SST uses ASCII.
_TRANSLATE = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": " '' ",
        "\u201d": " '' ",
        "\u2013": "-",
        "\u2014": "--",
        "\u2026": "...",
        "`": "'",
        '"': " '' ",  # SST writes quotes as `` and '': both become two ' tokens
    }
)

# Order matters: n't before 's so "isn't" -> "is n't".
_CONTRACTIONS = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"n't|'[a-z]+|[a-z0-9]+(?:[-'][a-z0-9]+)*|\.\.\.|--|[^\sa-z0-9]")


def normalize_sentiment(text: str) -> str:
    """Lowercase, unescape PTB brackets, fold unicode punctuation, collapse spaces."""
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE).lower()
    text = _ESCAPE_RE.sub(lambda m: _PTB_ESCAPES[m.group(0)], text)
    return " ".join(text.split())


def sentiment_tokens(text: str) -> list[str]:
    """Tokens for the sentiment model, the same for SST files and raw user text.

    >>> sentiment_tokens("It doesn't work -LRB- at all -RRB- !")
    ['it', 'does', "n't", 'work', '(', 'at', 'all', ')', '!']
    """
    text = normalize_sentiment(text)
    text = _CONTRACTIONS.sub(r" \1", text)
    return _TOKEN.findall(text)


def normalize_translation(text: str) -> str:
    """Translation input: NFKC unicode, single spaces, no trailing blanks (Multi30k has some)."""
    return " ".join(unicodedata.normalize("NFKC", text).split())
