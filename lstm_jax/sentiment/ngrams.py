"""A linear n-gram scorer beside the recurrent encoder: NB-weighted logistic regression on hashed word 1-2-grams.

On a small dataset a bag of n-grams and a recurrent model make different mistakes; the sum of their logits beats
both (README "Accuracy against linear baselines"). The scorer is the NB-LR of Wang & Manning (2012):

* features: the set of word unigrams and bigrams of a text (binary: a repeated n-gram counts once), over the
  token ids the model reads, hashed into ``2**log2_buckets`` buckets;
* each feature scaled by its naive-Bayes log-count ratio ``r = log(p / |p|_1) - log(q / |q|_1)``, with ``p`` and
  ``q`` the (add-one) counts of texts holding it among positive and negative training texts;
* an L2-regularised logistic regression on those features (L-BFGS), its strength ``C`` chosen by the scorer's own
  validation accuracy; the learned ``w * r`` per bucket and the bias are all that is kept.

The table is fitted once, before the recurrent model trains, from the training split only; training never
changes it (the recurrent model learns without it, evaluation adds it). Hashing keeps the graph free of string
lookups, so exported models (StableHLO, ONNX) compute the same ids from the same tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.sentiment.tokenizer import PAD_ID

# Multiplicative hashing (Knuth): the top bits of (a * K1 + b * K2) mod 2**32. A unigram is the pair (a, PAD).
HASH_FIRST, HASH_SECOND = 2654435761, 2246822519
C_GRID = (0.3, 1.0, 3.0)  # inverse L2 strengths tried (as scikit-learn's C: per-example loss summed, times C)
LBFGS_STEPS = 150


def ngram_ids(tokens: jax.Array, lengths: jax.Array, log2_buckets: int) -> tuple[jax.Array, jax.Array]:
    """``tokens <int32>[B, T]``, ``lengths <int32>[B]`` -> ``(ids <int32>[B, 2T-1], counted <bool>[B, 2T-1])``.

    ids: the T unigram then T-1 bigram buckets; counted: a real n-gram seen for the first time in its row (padding,
    n-grams reaching past the length and repeats are not counted).
    """
    time = tokens.shape[1]
    words = tokens.astype(jnp.uint32)
    pairs_first = jnp.concatenate([words, words[:, :-1]], axis=1)
    pairs_second = jnp.concatenate([jnp.full_like(words, PAD_ID), words[:, 1:]], axis=1)  # unigrams pair with PAD
    hashed = pairs_first * jnp.uint32(HASH_FIRST) + pairs_second * jnp.uint32(HASH_SECOND)
    ids = (hashed >> jnp.uint32(32 - log2_buckets)).astype(jnp.int32)
    position = jnp.concatenate([jnp.arange(time), jnp.arange(time - 1) + 1])  # last token each n-gram needs
    real = position[None, :] < lengths[:, None]
    same = ids[:, :, None] == ids[:, None, :]  # [B, N, N]
    earlier = jnp.tril(jnp.ones((ids.shape[1],) * 2, bool), k=-1)  # j < i
    repeated = jnp.any(same & earlier[None] & real[:, None, :], axis=-1)
    return ids, real & ~repeated


def ngram_logits(table: jax.Array, bias: jax.Array, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """``<float32>[B]``: the bias plus the table's values of each text's counted n-grams."""
    log2_buckets = int(np.log2(table.shape[0]))
    ids, counted = ngram_ids(tokens, lengths, log2_buckets)
    return jnp.sum(jnp.where(counted, table[ids], 0.0), axis=1) + bias


@dataclasses.dataclass
class NgramFit:
    table: np.ndarray  # <float32>[2**log2_buckets]: w * r per bucket (0 for buckets no training text holds)
    bias: float
    strength: float  # the chosen C
    validation_accuracy: dict[float, float]  # C -> the scorer's own validation accuracy

    def describe(self) -> str:
        tried = ", ".join(f"C={c:g} {100 * a:.2f}%" for c, a in self.validation_accuracy.items())
        return f"n-gram scorer: C={self.strength:g} chosen on validation ({tried})"


_batch_ids = jax.jit(ngram_ids, static_argnames="log2_buckets")


def _counted_ids(tokens: np.ndarray, lengths: np.ndarray, log2_buckets: int, batch: int = 512) -> np.ndarray:
    """``<int32>[N, 2T-1]``: bucket ids, -1 where not counted (computed in batches: the repeat test is N^2 a row)."""
    rows = []
    for start in range(0, len(tokens), batch):
        ids, counted = _batch_ids(tokens[start : start + batch], lengths[start : start + batch], log2_buckets)
        rows.append(np.where(np.asarray(counted), np.asarray(ids), -1))
    return np.concatenate(rows) if rows else np.zeros((0, 2 * tokens.shape[1] - 1), np.int32)


def _compact(ids: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """Bucket ids -> positions in ``buckets`` (sorted); uncounted or unknown buckets -> len(buckets) (a zero slot)."""
    position = np.searchsorted(buckets, ids)
    known = (ids >= 0) & (position < len(buckets))
    known[known] &= buckets[position[known]] == ids[known]
    return np.where(known, position, len(buckets)).astype(np.int32)


def _fit_logistic(features: jax.Array, ratio: jax.Array, labels: jax.Array, strength: float, start):
    """(w, b) minimising mean cross-entropy of ``sum_j w_j r_j`` over each row's features + |w|^2 / (2 C N)."""
    import optax  # here: prediction imports this module for ngram_logits only

    count = labels.shape[0]

    def loss(params):
        weights, bias = params
        scaled = jnp.append(weights * ratio, 0.0)  # the last slot: features not counted
        logits = jnp.sum(scaled[features], axis=1) + bias
        penalty = jnp.sum(weights * weights) / (2.0 * strength * count)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels)) + penalty

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (start, solver.init(start)), length=LBFGS_STEPS)
    return params


_fit_logistic_jit = jax.jit(_fit_logistic)


def fit_ngram_scorer(train: tuple[np.ndarray, np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray,
                     np.ndarray], log2_buckets: int, strengths=C_GRID) -> NgramFit:  # fmt: skip
    """Fits the table on ``train`` = (tokens, lengths, labels) and chooses C by accuracy on ``validation``.

    Ties go to the smaller C (the stronger regularisation). Without a validation split the middle C is used.
    """
    train_ids = _counted_ids(train[0], train[1], log2_buckets)
    labels = np.asarray(train[2])
    buckets = np.unique(train_ids[train_ids >= 0])
    features = _compact(train_ids, buckets)
    holding = lambda rows: np.bincount(features[rows].ravel(), minlength=len(buckets) + 1)[:-1] + 1.0  # noqa: E731
    positive, negative = holding(labels == 1), holding(labels == 0)
    ratio = np.log(positive / positive.sum()) - np.log(negative / negative.sum())
    val_features = _compact(_counted_ids(validation[0], validation[1], log2_buckets), buckets)
    tried, fits = {}, {}
    params = (jnp.zeros(len(buckets), jnp.float32), jnp.zeros((), jnp.float32))
    if len(validation[2]) == 0:
        strengths = [strengths[len(strengths) // 2]]
    for strength in sorted(strengths):  # warm start: each fit begins where the stronger-regularised one ended
        params = _fit_logistic_jit(jnp.asarray(features), jnp.asarray(ratio, jnp.float32),
                                   jnp.asarray(labels, jnp.float32), float(strength), params)  # fmt: skip
        weights, bias = (np.asarray(value) for value in params)
        scaled = np.append(weights * ratio, 0.0).astype(np.float32)
        val_logits = scaled[val_features].sum(axis=1) + bias
        tried[strength] = float(np.mean((val_logits > 0) == (np.asarray(validation[2]) == 1)))
        fits[strength] = (scaled[:-1], float(bias))
    best = max(tried, key=lambda strength: (tried[strength], -strength))
    table = np.zeros(1 << log2_buckets, np.float32)
    table[buckets] = fits[best][0]
    return NgramFit(table, fits[best][1], float(best), tried)
