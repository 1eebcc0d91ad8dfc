"""Character n-grams of the vocabulary's words, for subword embeddings (``--config.subword_buckets``).

As in fastText (Bojanowski et al. 2017), a word is also the bag of its character 3-, 4- and 5-grams, with ``<``
and ``>`` marking its ends: ``film`` is ``<fi``, ``fil``, ``ilm``, ``lm>``, ``<fil``, ... Each n-gram is hashed
(CRC-32, stable across Python versions and processes) into one of ``buckets`` rows of a learned table, and the
classifier adds the mean of a word's rows to its embedding. Words sharing n-grams share rows, so what training
teaches about ``unfunny`` also moves ``unfunniest``, even when only one of them occurs in the training texts.

Only the buckets of words that occur in the training texts ever receive a gradient; the others stay zero. The
job therefore keeps only those (:func:`compact_buckets`): the trained table shrinks (for ``configs/glove.py``
from 131,072 rows to about 49,000) and with it the optimizer's and the moving average's work, while every
word's vector stays what it was.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

NGRAM_SIZES = (3, 4, 5)
SLOTS = 24  # n-grams kept per word: all of them for words up to 9 characters, the first 24 of longer ones
NO_NGRAM = -1  # an empty slot (and every slot of padding, unknown, and words too short to have n-grams)


def word_ngrams(word: str) -> list[str]:
    """The distinct character n-grams of ``<word>``, shortest first, in order of position; at most :data:`SLOTS`."""
    marked = f"<{word}>"
    grams = (marked[start : start + size] for size in NGRAM_SIZES for start in range(len(marked) - size + 1))
    return list(dict.fromkeys(grams))[:SLOTS]


def subword_ids(words: Sequence[str], buckets: int) -> np.ndarray:
    """``<int32>[2 + len(words), SLOTS]``: row ``i + 2`` holds the buckets of ``words[i]``'s n-grams (the
    vocabulary's id order: rows 0 and 1, padding and unknown, have none), :data:`NO_NGRAM` in unused slots."""
    if buckets < 1:
        raise ValueError(f"subword buckets must be positive, got {buckets}")
    table = np.full((len(words) + 2, SLOTS), NO_NGRAM, np.int32)
    for row, word in enumerate(words, start=2):
        grams = word_ngrams(word)
        table[row, : len(grams)] = [zlib.crc32(gram.encode("utf-8")) % buckets for gram in grams]
    return table


def compact_buckets(table: np.ndarray, trained_rows: np.ndarray) -> tuple[np.ndarray, int]:
    """``table`` (from :func:`subword_ids`) renumbered so the learned table need only hold the buckets that
    training can reach: those of the rows ``trained_rows`` (the word ids in the training texts) take the rows
    ``0 .. n - 1`` in bucket order, and every other bucket the one row ``n``, which training never reaches and
    so keeps at zero, as those buckets would have stayed. Returns ``(renumbered table, n + 1 rows)``."""
    rows = np.unique(np.asarray(trained_rows))
    reached = np.unique(table[rows[(rows >= 0) & (rows < len(table))]])
    reached = reached[reached != NO_NGRAM]
    renumbered = np.where(np.isin(table, reached), np.searchsorted(reached, table), len(reached))
    renumbered = np.where(table == NO_NGRAM, NO_NGRAM, renumbered)
    return renumbered.astype(np.int32), len(reached) + 1
