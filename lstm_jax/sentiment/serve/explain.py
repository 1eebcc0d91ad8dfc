"""Which words pushed a prediction which way: leave-one-out (occlusion) contributions.

For a statement of ``n`` read tokens with probability of positive ``p``, token ``i``'s contribution is
``p - p_without_i``, where ``p_without_i`` is the model's probability for the same token ids with token ``i``
removed (later tokens move up one place, the length drops by one). Positive: the word pushed towards
positive; negative: towards negative. Removal rather than replacement by the unknown id, because the
unknown id is itself a word the model learned (it leans negative on Rotten Tomatoes).

The ``n`` occluded rows are ordinary model inputs, so they are scored in the same batched call as the
statements themselves (the service puts both in one micro-batch): any exported format explains, and no
gradient program has to be compiled or exported.
"""

from __future__ import annotations

import numpy as np


def occluded_rows(ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``ids <int32>[max_len]`` of one statement with ``length`` read tokens -> (``<int32>[length, max_len]``,
    ``<int32>[length]``): row ``i`` is the statement without token ``i``, padded with 0 at the end."""
    max_len = ids.shape[0]
    positions = np.arange(max_len)
    rows = np.zeros((length, max_len), np.int32)
    for index in range(length):
        kept = positions[:length][positions[:length] != index]
        rows[index, : length - 1] = ids[kept]
    return rows, np.full(length, max(length - 1, 0), np.int32)


def contributions(probability: float, occluded_probabilities: np.ndarray) -> np.ndarray:
    """``<float32>[n]``: how much each token raised the probability of positive (``p - p_without_token``)."""
    return np.float32(probability) - np.asarray(occluded_probabilities, np.float32)
