"""Token vocabularies: words for sentiment, characters for the generator.

Special ids are declared once here. Unknown tokens map to UNK_ID and never raise.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIALS = (PAD, UNK, BOS, EOS)


class Vocab:
    """An id <-> token table whose first four entries are SPECIALS."""

    def __init__(self, tokens: Iterable[str]):
        self.itos: list[str] = list(tokens)
        if tuple(self.itos[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with the specials {SPECIALS}, "
                             f"got {tuple(self.itos[: len(SPECIALS)])}")
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            repeated = sorted(t for t, n in Counter(self.itos).items() if n > 1)
            raise ValueError(f"a vocabulary lists each token once; repeated: {repeated[:5]}")

    @classmethod
    def build(cls, sequences: Iterable[Iterable[str]], min_freq: int = 1, max_size: int | None = None):
        """Most frequent first, ties broken alphabetically so builds are reproducible."""
        counts = Counter(tok for seq in sequences for tok in seq)
        kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in SPECIALS),
                      key=lambda t: (-counts[t], t))
        if max_size is not None:
            if max_size < len(SPECIALS):  # a negative slice below would keep almost everything
                raise ValueError(f"max_size must be at least {len(SPECIALS)} (the specials), got {max_size}")
            kept = kept[: max_size - len(SPECIALS)]
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.stoi.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int], skip_specials: bool = True) -> list[str]:
        return [self.itos[i] for i in ids if not (skip_specials and i < len(SPECIALS))]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.itos, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))
