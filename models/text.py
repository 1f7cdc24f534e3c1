"""Text normalisation shared by training and serving.

SST-2 is lowercased and tokenised Penn-Treebank style ("does n't", "it 's", "( and )").
User text arrives raw: mixed case, contractions glued on, punctuation touching words.
`sentiment_tokens` maps both onto the same token stream, so the vocabulary built
from the training files sees what a user's sentence becomes.

The normaliser is versioned because a model learns the token stream it was trained on: a
sentiment artifact's config names the version it was trained with and is always served with
that one, so changing how text is read never silently changes a shipped model's answers.
- 1: lowercase, PTB unescaping, unicode punctuation folded, contractions split.
- 2: 1, plus what user text carries and review sets spell differently: HTML entities unescaped,
  URLs and @mentions dropped, hashtags read as their word, a few sentiment-bearing emoji and
  emoticons read as a word of the same meaning (other emoji dropped), letters repeated three or
  more times cut to two ("soooo goooood" -> "soo good"), and negations written without their
  apostrophe ("dont", "isnt") read as the tokenised form ("do n't").
"""

from __future__ import annotations

import html
import re
import unicodedata

NORMALIZERS = (1, 2)
LATEST_NORMALIZER = NORMALIZERS[-1]

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


# Version 2's additions. URLs and @mentions name things, not feelings; the datasets have
# (almost) none, so a model only ever saw their pieces as noise.
_URL = re.compile(r"(?:https?://|www\.)\S+")  # on lowercased text
_MENTION = re.compile(r"(?<![\w@])@\w+")
_HASHTAG = re.compile(r"(?<![\w#])#(?=\w)")
_REPEATS = re.compile(r"([a-z])\1{2,}")
# Emoji and emoticons no training set holds, as a word of the same meaning that they do hold.
_EMOJI_WORDS = {
    "\U0001F600": "happy", "\U0001F601": "happy", "\U0001F603": "happy", "\U0001F604": "happy",
    "\U0001F60A": "happy", "\U0001F642": "happy", "\u263A": "happy", "\U0001F970": "love",
    "\U0001F60D": "love", "\u2764": "love", "\U0001F495": "love", "\U0001F496": "love",
    "\U0001F602": "funny", "\U0001F923": "funny", "\U0001F44D": "good", "\U0001F44C": "good",
    "\U0001F44F": "great", "\U0001F525": "great", "\u2B50": "great", "\U0001F31F": "great",
    "\U0001F44E": "bad", "\U0001F641": "sad", "\u2639": "sad", "\U0001F622": "sad",
    "\U0001F62D": "sad", "\U0001F61E": "sad", "\U0001F620": "angry", "\U0001F621": "angry",
    "\U0001F624": "angry", "\U0001F92C": "angry", "\U0001F92E": "disgusting",
    "\U0001F922": "disgusting", "\U0001F4A9": "crap", "\U0001F644": "annoying",
    "\U0001F634": "boring", "\U0001F971": "boring", "\U0001F610": "meh", "\U0001F615": "meh",
}
_EMOTICONS = {":)": "happy", ":-)": "happy", "(:": "happy", ":d": "happy", ":-d": "happy",
              ";)": "happy", ";-)": "happy", "<3": "love", ":(": "sad", ":-(": "sad",
              ":'(": "sad", "):": "sad", ":/": "meh", ":-/": "meh"}
_EMOTICON = re.compile("(?<!\\S)(?:"
                       + "|".join(re.escape(e) for e in sorted(_EMOTICONS, key=len, reverse=True))
                       + ")(?!\\S)")  # standing alone: "(at all):" is no emoticon
# Emoji (symbols, other) and what joins or varies them: dropped once the table above is read.
_DROPPED_CATEGORIES = {"So", "Sk", "Cs", "Co", "Cn"}
_JOINERS = {"\u200d", "\ufe0f", "\ufe0e"}
# "dont" -> "do n't", as the datasets write it; only negations, whose loss flips a sentence.
_BARE_NEGATIONS = {w: f"{w[:-2]} n't" for w in (
    "dont", "doesnt", "didnt", "isnt", "wasnt", "arent", "werent", "havent", "hasnt", "hadnt",
    "couldnt", "wouldnt", "shouldnt", "mustnt", "neednt")}
_BARE_NEGATIONS.update({"cant": "ca n't", "wont": "wo n't", "aint": "ai n't"})
_BARE_NEGATION = re.compile(r"\b(" + "|".join(_BARE_NEGATIONS) + r")\b")


def _user_text_v2(text: str) -> str:
    """Version 2's steps, on text already lowercased and folded by normalize_sentiment. Each
    pattern runs only where its first character occurs: most texts have none of them."""
    if "http" in text or "www." in text:
        text = _URL.sub(" ", text)
    if "@" in text:
        text = _MENTION.sub(" ", text)
    if "#" in text:
        text = _HASHTAG.sub("", text)
    if ":" in text or ";" in text or "<3" in text or "(:" in text:
        text = _EMOTICON.sub(lambda m: f" {_EMOTICONS[m.group(0)]} ", text)
    if text.isascii():  # the one ASCII character of the dropped categories ("`" is folded above)
        text = text.replace("^", " ")
    else:
        text = "".join(f" {_EMOJI_WORDS[c]} " if c in _EMOJI_WORDS
                       else " " if c in _JOINERS or unicodedata.category(c) in _DROPPED_CATEGORIES
                       else c for c in text)
    text = _REPEATS.sub(r"\1\1", text)
    if "nt" in text:  # in every bare negation
        text = _BARE_NEGATION.sub(lambda m: _BARE_NEGATIONS[m.group(0)], text)
    return text


def normalize_sentiment(text: str, version: int = 1) -> str:
    """Lowercase, unescape PTB brackets, fold unicode punctuation, collapse spaces; from version 2
    also unescape HTML first and apply `_user_text_v2`."""
    if version not in NORMALIZERS:
        raise ValueError(f"sentiment normaliser version {version} is not one of {NORMALIZERS}")
    if version >= 2:
        text = html.unescape(text)
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE).lower()
    text = _ESCAPE_RE.sub(lambda m: _PTB_ESCAPES[m.group(0)], text)
    if version >= 2:
        text = _user_text_v2(text)
    return " ".join(text.split())


def sentiment_tokens(text: str, version: int = 1) -> list[str]:
    """Tokens for the sentiment model, the same for SST files and raw user text; `version` is the
    normaliser the model was trained with (its config's `normalizer`).

    >>> sentiment_tokens("It doesn't work -LRB- at all -RRB- !")
    ['it', 'does', "n't", 'work', '(', 'at', 'all', ')', '!']
    """
    text = normalize_sentiment(text, version)
    text = _CONTRACTIONS.sub(r" \1", text)
    return _TOKEN.findall(text)


def normalize_translation(text: str) -> str:
    """Translation input: NFKC unicode, single spaces, no trailing blanks (Multi30k has some)."""
    return " ".join(unicodedata.normalize("NFKC", text).split())
