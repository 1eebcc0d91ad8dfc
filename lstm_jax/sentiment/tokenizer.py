"""Word-level vocabulary, fitted on the training split only and saved inside every checkpoint.

Text handling (the same at training and prediction time):

* lower-cased; HTML line breaks (``<br />``, as in IMDB) become spaces; under the rules ``lowercase-words-v2``
  (not the default ``-v1``), typographic apostrophes (``’ ‘ ʼ ＇ ´ ```) become ``'``, so ``can’t``, as phones type
  it, is the word ``can't`` rather than ``can`` and ``t``;
* a token is a run of letters/digits, optionally with one apostrophe suffix (``don't``, ``film's``),
  or one of ``!`` and ``?`` (they carry sentiment); all other punctuation separates tokens and is dropped;
* ids: 0 = padding, 1 = unknown word, 2... = the ``vocab_size - 2`` most frequent training words
  (ties broken alphabetically, so fitting is deterministic);
* sequences are padded at the end with 0 and truncated to their first ``max_len`` tokens; the true
  lengths are passed to the recurrent layers, which never read the padding.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD_ID = 0
UNKNOWN_ID = 1
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?|[!?]")
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u2018\u02bc\uff07\u00b4`", "'"))
TOKENIZERS = ("lowercase-words-v1", "lowercase-words-v2")  # the rules by name, as checkpoints record them
TOKENIZER = "lowercase-words-v1"  # the default rules (config.tokenizer)


def check_rules(rules: str) -> None:
    """A ValueError naming ``rules`` when they are not the name of a rule set."""
    if rules not in TOKENIZERS:
        raise ValueError(f"tokenizer {rules!r} is not one of {', '.join(TOKENIZERS)}")


def tokenize(text: str, max_tokens: int | None = None, rules: str = TOKENIZER) -> list[str]:
    """Splits text into tokens by the named ``rules``; stops after ``max_tokens`` so a huge line costs only what
    is kept."""
    check_rules(rules)
    text = _HTML_BREAK.sub(" ", text.lower())
    if rules != "lowercase-words-v1":
        text = text.translate(_APOSTROPHES)
    tokens = []
    for match in _TOKEN.finditer(text):
        if max_tokens is not None and len(tokens) >= max_tokens:
            break
        tokens.append(match.group())
    return tokens


class Vocabulary:
    """Maps words to ids (0 padding, 1 unknown); ``words[i]`` is the word with id ``i + 2``. Texts are split by
    the tokenizer ``rules`` the vocabulary was fitted with."""

    def __init__(self, words: Sequence[str], rules: str = TOKENIZER):
        check_rules(rules)
        self.words, self.rules = list(words), rules
        self._ids = {word: index + 2 for index, word in enumerate(self.words)}

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int, rules: str = TOKENIZER) -> Vocabulary:
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (padding, unknown and one word), got {vocab_size}")
        counts = collections.Counter()
        for text in texts:
            counts.update(tokenize(text, rules=rules))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls([word for word, _ in ranked[: vocab_size - 2]], rules)

    @property
    def size(self) -> int:
        """Number of ids, padding and unknown included (the embedding's row count)."""
        return len(self.words) + 2

    def encode(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (ids <int32>[n, max_len] padded at the end, lengths <int32>[n])."""
        ids = np.zeros((len(texts), max_len), np.int32)
        lengths = np.zeros((len(texts),), np.int32)
        for row, text in enumerate(texts):
            tokens = tokenize(text, max_tokens=max_len, rules=self.rules)
            ids[row, : len(tokens)] = [self._ids.get(token, UNKNOWN_ID) for token in tokens]
            lengths[row] = len(tokens)
        return ids, lengths

    def to_json(self) -> list[str]:
        return list(self.words)

    @classmethod
    def from_json(cls, words: list[str], rules: str) -> Vocabulary:
        return cls(words, rules)
