"""Word vectors from the training texts alone: truncated SVD of the positive PMI co-occurrence matrix.

Used to initialise the embedding table (``--config.embedding_init=ppmi_svd``) so that words seen in
similar contexts start close together, which helps when only a few thousand labelled snippets are there
to learn from. Only the training split is read; the result is deterministic given the seed.

Steps: symmetric co-occurrence counts within ``window`` tokens (weighted 1/distance) over real tokens
(not padding or unknown); PPMI = max(0, log(p(a, b) / (p(a) p(b)))); a randomized SVD (Halko et al. 2011,
three power iterations) keeps ``dim`` components; vectors are U sqrt(S).
"""

from __future__ import annotations

import numpy as np

from lstm_jax.sentiment.tokenizer import UNKNOWN_ID


def ppmi_svd_embeddings(ids: np.ndarray, vocab_size: int, dim: int, window: int = 4, seed: int = 0) -> np.ndarray:
    """ids <int>[n, time] (0 padding) -> vectors <float32>[vocab_size, dim]; rows 0 and 1 are zero."""
    counts = np.zeros((vocab_size, vocab_size), np.float32)
    for offset in range(1, window + 1):
        left, right = ids[:, :-offset], ids[:, offset:]
        real = (left > UNKNOWN_ID) & (right > UNKNOWN_ID)
        np.add.at(counts, (left[real], right[real]), 1.0 / offset)
    counts += counts.T
    total = counts.sum()
    if total == 0:
        return np.zeros((vocab_size, dim), np.float32)
    row = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(counts * total / (row * row.T))
    ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    basis = ppmi @ rng.standard_normal((vocab_size, min(vocab_size, dim + 16))).astype(np.float32)
    for _ in range(3):  # power iterations sharpen the leading subspace
        basis, _ = np.linalg.qr(basis)
        basis = ppmi @ (ppmi.T @ basis)
    basis, _ = np.linalg.qr(basis)
    u, singular, _ = np.linalg.svd(basis.T @ ppmi, full_matrices=False)
    vectors = (basis @ u[:, :dim]) * np.sqrt(singular[:dim])
    if vectors.shape[1] < dim:  # tiny vocabularies: pad the missing components with zeros
        vectors = np.pad(vectors, ((0, 0), (0, dim - vectors.shape[1])))
    vectors[: UNKNOWN_ID + 1] = 0.0  # padding and unknown never co-occur; remove rounding noise
    return vectors.astype(np.float32)
