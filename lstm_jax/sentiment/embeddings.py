"""Word vectors from the training texts alone: truncated SVD of the positive PMI co-occurrence matrix.

Used to initialise the embedding table (``--config.embedding_init=ppmi_svd``) so that words seen in
similar contexts start close together, which helps when only a few thousand labelled snippets are there
to learn from. Only the training split is read; the result is deterministic given the seed.

Steps: symmetric co-occurrence counts within ``window`` tokens (weighted 1/distance) over real tokens
(not padding or unknown); PPMI = max(0, log(p(a, b) / (p(a) p(b)))); a randomized SVD (Halko et al. 2011,
three power iterations) keeps ``dim`` components; vectors are U sqrt(S). The PPMI entries are computed only for
the pairs that co-occur (a few % of V x V), which keeps this about a second for an 8,000-word vocabulary.
"""

from __future__ import annotations

import numpy as np

from lstm_jax.sentiment.tokenizer import UNKNOWN_ID


def _ppmi(ids: np.ndarray, vocab_size: int, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The positive PMI matrix in sparse form: (rows, cols, values), sorted by row; symmetric."""
    lefts, rights, weights = [], [], []
    for offset in range(1, window + 1):
        left, right = ids[:, :-offset], ids[:, offset:]
        real = (left > UNKNOWN_ID) & (right > UNKNOWN_ID)
        lefts.append(left[real])
        rights.append(right[real])
        weights.append(np.full(int(real.sum()), 1.0 / offset))
    left, right, weight = (np.concatenate(x) for x in (lefts, rights, weights))
    codes = np.concatenate([left * vocab_size + right, right * vocab_size + left]).astype(np.int64)
    pairs, which = np.unique(codes, return_inverse=True)
    counts = np.bincount(which, weights=np.concatenate([weight, weight]))
    rows, cols = pairs // vocab_size, pairs % vocab_size
    totals = np.bincount(rows, weights=counts, minlength=vocab_size)
    pmi = np.log(counts * counts.sum() / (totals[rows] * totals[cols]))
    keep = pmi > 0
    return rows[keep], cols[keep], pmi[keep]


def ppmi_svd_embeddings(ids: np.ndarray, vocab_size: int, dim: int, window: int = 4, seed: int = 0) -> np.ndarray:
    """ids <int>[n, time] (0 padding) -> vectors <float32>[vocab_size, dim]; rows 0 and 1 are zero."""
    rows, cols, values = _ppmi(np.asarray(ids), vocab_size, window)
    ppmi = np.zeros((vocab_size, vocab_size), np.float32)  # dense for BLAS: 8 products dominate, ~0.05 s each
    ppmi[rows, cols] = values
    rng = np.random.default_rng(seed)
    basis = ppmi @ rng.standard_normal((vocab_size, min(vocab_size, dim + 16))).astype(np.float32)
    for _ in range(3):  # power iterations sharpen the leading subspace (PPMI is symmetric: P^T = P)
        basis, _ = np.linalg.qr(basis)
        basis = ppmi @ (ppmi @ basis)
    basis, _ = np.linalg.qr(basis)
    u, singular, _ = np.linalg.svd(basis.T @ ppmi, full_matrices=False)
    vectors = (basis @ u[:, :dim]) * np.sqrt(singular[:dim])
    if vectors.shape[1] < dim:  # tiny vocabularies: pad the missing components with zeros
        vectors = np.pad(vectors, ((0, 0), (0, dim - vectors.shape[1])))
    vectors[: UNKNOWN_ID + 1] = 0.0  # padding and unknown never co-occur
    return vectors.astype(np.float32)
