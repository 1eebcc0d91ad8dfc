"""A linear n-gram scorer beside the recurrent encoder: NB-weighted logistic regression on hashed word n-grams.

On a small dataset a bag of n-grams and a recurrent model make different mistakes; the sum of their logits beats
both (`python benchmarks/accuracy.py` against `benchmarks/baselines.py`). The scorer is the NB-LR of Wang &
Manning (2012):

* features: the set of word 1- to ``order``-grams of a text (binary: a repeated n-gram counts once), over the
  token ids the model reads, hashed into ``2**log2_buckets`` buckets (order 3, 1-3-grams, in the default config:
  chosen on validation, figures in benchmarks/results/HISTORY.md);
* each feature scaled by its naive-Bayes log-count ratio ``r = log(p / |p|_1) - log(q / |q|_1)``, with ``p`` and
  ``q`` the (add-one) counts of texts holding it among positive and negative training texts;
* an L2-regularised logistic regression on those features (SciPy's Newton-CG on a sparse matrix), its strength
  ``C`` chosen by the scorer's own validation accuracy; the learned ``w * r`` per bucket and the bias are all
  that is kept.

The table is fitted once, before the recurrent model trains, from the training split only; training never
changes it (the recurrent model learns without it, evaluation adds it). Hashing keeps the graph free of string
lookups, so exported models (StableHLO, ONNX) compute the same ids from the same tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lstm_jax.sentiment.tokenizer import PAD_ID

# Multiplicative hashing (Knuth): the top bits of (a * K1 + b * K2 + c * K3) mod 2**32 for the trigram (a, b, c),
# of (a * K1 + b * K2) for a bigram, and a unigram is the bigram (a, PAD): a model of order 2 computes the same ids
# as one of order 3 without its trigrams.
HASH_MULTIPLIERS = (2654435761, 2246822519, 3266489917)
ORDERS = (2, 3)  # the n-gram orders a scorer may have
C_GRID = (0.3, 1.0, 3.0)  # inverse L2 strengths tried (as scikit-learn's C: per-example loss summed, times C)
MAX_ITERATIONS = 200  # Newton steps per C (about 10 suffice)


def ngram_ids(tokens: jax.Array, lengths: jax.Array, log2_buckets: int, order: int = 2) -> tuple[jax.Array, jax.Array]:
    """``tokens <int32>[B, T]``, ``lengths <int32>[B]`` -> ``(ids <int32>[B, N], counted <bool>[B, N])``.

    ids: the T unigram buckets, then T-1 bigram and (order 3) T-1 trigram buckets, N = T + (order-1)(T-1);
    counted: a real n-gram seen for the first time in its row (padding, n-grams reaching past the length and
    repeats are not counted). Each text's trigrams are read with one pad appended, so every n-gram order has T-1
    columns: an export with a symbolic T then never needs the sign of T-2 (the last trigram column, ending in that
    pad, is never counted).
    """
    time = tokens.shape[1]
    words = tokens.astype(jnp.uint32)
    multipliers = [jnp.uint32(k) for k in HASH_MULTIPLIERS]
    hashed = [words * multipliers[0] + jnp.uint32(PAD_ID) * multipliers[1]]  # unigrams: the bigram (a, PAD)
    positions = [jnp.arange(time)]  # the last token each n-gram needs
    for n in range(2, order + 1):
        padded = jnp.pad(words, ((0, 0), (0, n - 2)), constant_values=PAD_ID)  # [B, T + n - 2]
        terms = [padded[:, k : k + time - 1] * multipliers[k] for k in range(n)]
        hashed.append(sum(terms[1:], terms[0]))
        positions.append(jnp.arange(time - 1) + n - 1)
    ids = (jnp.concatenate(hashed, axis=1) >> jnp.uint32(32 - log2_buckets)).astype(jnp.int32)
    position = jnp.concatenate(positions)
    real = position[None, :] < lengths[:, None]
    same = ids[:, :, None] == ids[:, None, :]  # [B, N, N]
    earlier = jnp.tril(jnp.ones((ids.shape[1],) * 2, bool), k=-1)  # j < i
    repeated = jnp.any(same & earlier[None] & real[:, None, :], axis=-1)
    return ids, real & ~repeated


def ngram_logits(table: jax.Array, bias: jax.Array, tokens: jax.Array, lengths: jax.Array, order: int = 2) -> jax.Array:
    """``<float32>[B]``: the bias plus the table's values of each text's counted 1- to ``order``-grams."""
    log2_buckets = int(np.log2(table.shape[0]))
    ids, counted = ngram_ids(tokens, lengths, log2_buckets, order)
    return jnp.sum(jnp.where(counted, table[ids], 0.0), axis=1) + bias


class NgramTable(nnx.Variable):
    """A fitted, never-trained weight of the n-gram scorer (kept apart from the parameters)."""


class NgramScorer(nnx.Module):
    """``tokens <int32>[B, T]``, ``lengths <int32>[B]`` -> ``logits <float32>[B]``: ``bias + sum of table[bucket]``
    over each text's distinct word 1- to ``order``-grams; ``table <float32>[buckets]`` and ``bias`` are filled from
    :func:`fit_ngram_scorer` before training (:meth:`fill`)."""

    def __init__(self, buckets: int, order: int = 2):
        if buckets & (buckets - 1):
            raise ValueError(f"ngram_buckets must be a power of two, got {buckets}")
        if order not in ORDERS:
            raise ValueError(f"ngram_order must be one of {ORDERS}, got {order}")
        self.order = order
        self.table = NgramTable(jnp.zeros((buckets,), jnp.float32))
        self.bias = NgramTable(jnp.zeros((), jnp.float32))

    def fill(self, table, bias) -> None:
        self.table[...], self.bias[...] = table, bias

    def __call__(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        return ngram_logits(self.table[...], self.bias[...], tokens, lengths, self.order)


@dataclasses.dataclass
class NgramFit:
    table: np.ndarray  # <float32>[2**log2_buckets]: w * r per bucket (0 for buckets no training text holds)
    bias: float
    strength: float  # the chosen C
    validation_accuracy: dict[float, float]  # C -> the scorer's own validation accuracy

    def describe(self) -> str:
        if all(np.isnan(accuracy) for accuracy in self.validation_accuracy.values()):
            return f"n-gram scorer: C={self.strength:g} (the middle of the grid: no validation split)"
        tried = ", ".join(f"C={c:g} {100 * a:.2f}%" for c, a in self.validation_accuracy.items())
        return f"n-gram scorer: C={self.strength:g} chosen on validation ({tried})"


_batch_ids = jax.jit(ngram_ids, static_argnames=("log2_buckets", "order"))


def _counted_ids(tokens: np.ndarray, lengths: np.ndarray, log2_buckets: int, order: int,
                 batch: int = 512) -> np.ndarray:  # fmt: skip
    """``<int32>[N, columns]``: bucket ids, -1 where not counted (in batches: the repeat test is columns^2 a row)."""
    rows = []
    for start in range(0, max(len(tokens), 1), batch):  # no texts: one empty batch, which still has the columns
        ids, counted = _batch_ids(tokens[start : start + batch], lengths[start : start + batch], log2_buckets, order)
        rows.append(np.where(np.asarray(counted), np.asarray(ids), -1))
    return np.concatenate(rows)


def _features(ids: np.ndarray, buckets: np.ndarray):
    """Counted bucket ids <[N, 2T-1]> -> binary features <[N, len(buckets)]> (a SciPy CSR matrix) over the sorted
    ``buckets`` (buckets not among them are dropped: no training text holds them)."""
    import scipy.sparse  # here, as SciPy's optimiser below: prediction imports this module and needs neither

    rows, columns = np.nonzero(ids >= 0)
    position = np.searchsorted(buckets, ids[rows, columns])
    known = position < len(buckets)
    known[known] &= buckets[position[known]] == ids[rows, columns][known]
    return scipy.sparse.csr_matrix((np.ones(known.sum()), (rows[known], position[known])),
                                   shape=(len(ids), len(buckets)))  # fmt: skip


def _fit_logistic(features, labels: np.ndarray, strength: float, start: np.ndarray):
    """``[w..., b]`` minimising the mean cross-entropy of ``features @ w + b`` plus ``|w|^2 / (2 C N)``.

    Newton's method with conjugate gradients (SciPy's Newton-CG) and exact Hessian-vector products
    ``X^T D X v + v / (C N)``: about 10 steps, 4.7-7.4 times faster here than L-BFGS, and closer to the optimum.
    """
    import scipy.optimize
    import scipy.special

    count, signs = len(labels), np.where(labels == 1, 1.0, -1.0)
    curvature = {}  # the Hessian's diagonal factor D at the point the last gradient was taken

    def loss_and_gradient(theta):
        margins = signs * (features @ theta[:-1] + theta[-1])
        wrong = scipy.special.expit(-margins)  # the probability given to the other label
        curvature["D"] = wrong * (1.0 - wrong) / count
        slope = -signs * wrong / count  # d loss / d logit
        penalty = theta[:-1] / (strength * count)
        loss = np.mean(np.logaddexp(0.0, -margins)) + theta[:-1] @ penalty / 2
        return loss, np.append(features.T @ slope + penalty, slope.sum())

    def hessian_times(theta, vector):
        scaled = curvature["D"] * (features @ vector[:-1] + vector[-1])
        return np.append(features.T @ scaled + vector[:-1] / (strength * count), scaled.sum())

    return scipy.optimize.minimize(loss_and_gradient, start, jac=True, hessp=hessian_times, method="Newton-CG",
                                   options={"xtol": 1e-6, "maxiter": MAX_ITERATIONS}).x  # fmt: skip


def fit_ngram_scorer(train: tuple[np.ndarray, np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray,
                     np.ndarray], log2_buckets: int, strengths=C_GRID, order: int = 2) -> NgramFit:  # fmt: skip
    """Fits the table on ``train`` = (tokens, lengths, labels) and chooses C by accuracy on ``validation``.

    Ties go to the smaller C (the stronger regularisation). Without a validation split the middle C is used.
    """
    train_ids = _counted_ids(train[0], train[1], log2_buckets, order)
    val_ids = _counted_ids(validation[0], validation[1], log2_buckets, order)
    return _fit_on_ids(train_ids, np.asarray(train[2]), val_ids, np.asarray(validation[2]), log2_buckets, strengths)


def _fit_on_ids(train_ids: np.ndarray, labels: np.ndarray, val_ids: np.ndarray, val_labels: np.ndarray,
                log2_buckets: int, strengths) -> NgramFit:  # fmt: skip
    """:func:`fit_ngram_scorer` from counted bucket ids (:func:`_counted_ids`, computed row by row, so a
    subset's ids are the rows of the whole set's)."""
    import scipy.sparse

    buckets = np.unique(train_ids[train_ids >= 0])
    features = _features(train_ids, buckets)
    holding = lambda rows: np.asarray(features[rows].sum(axis=0)).ravel() + 1.0  # noqa: E731  add-one counts
    positive, negative = holding(labels == 1), holding(labels == 0)
    ratio = np.log(positive / positive.sum()) - np.log(negative / negative.sum())
    scaled = features @ scipy.sparse.diags(ratio)
    val_features = _features(val_ids, buckets) @ scipy.sparse.diags(ratio)
    tried, fits = {}, {}
    theta = np.zeros(len(buckets) + 1)
    if len(val_labels) == 0:
        strengths = [strengths[len(strengths) // 2]]
    for strength in sorted(strengths):  # warm start: each fit begins where the stronger-regularised one ended
        theta = _fit_logistic(scaled, labels, float(strength), theta)
        val_logits = val_features @ theta[:-1] + theta[-1]
        right = (val_logits > 0) == (val_labels == 1)
        tried[strength] = float(np.mean(right)) if len(right) else np.nan
        fits[strength] = theta
    best = max(tried, key=lambda strength: (tried[strength], -strength))
    table = np.zeros(1 << log2_buckets, np.float32)
    table[buckets] = fits[best][:-1] * ratio
    return NgramFit(table, float(fits[best][-1]), float(best), tried)

