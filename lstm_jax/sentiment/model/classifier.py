"""The sentiment classifier, built from parts: :class:`Embedder` -> recurrent encoder (``lstm_jax.make_recurrent``)
-> :class:`Pooling` -> :class:`Head`, with the n-gram scorer (:class:`.ngrams.NgramScorer`) beside them.

:func:`build_model` assembles the parts from a config and the sizes the data decided (:class:`DataSizes`), so a
checkpoint need hold only those two. Weights that train are ``nnx.Param``; the fixed tables are their own
``nnx.Variable`` types (:class:`FixedTable`, :class:`RowSlots`, :class:`SubwordBuckets`, ``NgramTable``), which
the train state keeps apart from the parameters (``nnx.split(model, nnx.Param, ...)``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lstm_jax.recurrent import make_recurrent
from lstm_jax.sentiment.data.subwords import NO_NGRAM, SLOTS
from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.model.ngrams import NgramScorer
from lstm_jax.sentiment.tokenizer import PAD_ID, UNKNOWN_ID

POOLINGS = ("last", "max", "mean_max")
XLSTM_CELLS = ("slstm", "mlstm")  # they take num_heads


class FixedTable(nnx.Variable):
    """Embedding vectors kept as initialised: the static channel, and the full table when only the rows of the
    training texts' words train (those rows are then a parameter of their own, ``embed_rows``)."""


class RowSlots(nnx.Variable):
    """``<int32>[vocab]``: each id's row in ``embed_rows``, or -1 for a word training never reads."""


class SubwordBuckets(nnx.Variable):
    """``<int32>[vocab, SLOTS]``: each word's character n-gram rows (:func:`.subwords.subword_ids`)."""


@dataclasses.dataclass(frozen=True)
class DataSizes:
    """The model's sizes that the data decides rather than the config (saved in checkpoints beside it)."""

    vocab_size: int  # ids in the vocabulary (may exceed config.vocab_size with vectors_vocab)
    subword_rows: int = 0  # rows of the compacted subword table (:func:`.subwords.compact_buckets`); 0 = one a bucket
    trained_rows: int = 0  # embedding rows training moves (vectors_vocab); 0 = the whole table


def _fixed(embed: nnx.Embed) -> nnx.Embed:
    """``embed`` with its table retyped as a :class:`FixedTable` (initialised as usual, never trained)."""
    embed.embedding = FixedTable(embed.embedding[...])
    return embed


class Embedder(nnx.Module):
    """``tokens <int32>[B, T]`` -> ``<[B, T, features]>``, what the encoder reads for each token ``w``::

        e_w = embed_rows[row_slots[w]] if row_slots[w] >= 0 else embed[w]   (with trained_rows; else embed[w])
        x_w = e_w + mean_k subword_embed[subword_ids[w, k]]    (over w's filled slots; with subword_buckets)
        x_w = concat(x_w, static[w])                                (with static: features = 2 x dim)

    ``subword_embed`` starts at zero, so training starts from ``embed`` alone; ``static`` is a copy of ``embed``'s
    initial vectors that training leaves as it is (Kim 2014's "static" channel). With ``trained_rows``, only the
    rows of words the training texts contain train (``embed_rows``, filled from ``embed``); training would never
    move the others, so the model computes the same with the optimizer's work shrunk to the rows it can move.
    """

    def __init__(self, vocab_size: int, dim: int, *, static: bool = False, subword_buckets: int = 0,
                 subword_rows: int = 0, trained_rows: int = 0, dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        self.embed = nnx.Embed(vocab_size, dim, dtype=dtype, rngs=rngs)
        self.static = _fixed(nnx.Embed(vocab_size, dim, dtype=dtype, rngs=rngs)) if static else None
        self.row_slots = nnx.data(None)
        if trained_rows:  # drawn from no key: every other weight starts as it would without it
            self.row_slots = RowSlots(jnp.full((vocab_size,), -1, jnp.int32))
            self.embed_rows = nnx.Param(jnp.zeros((trained_rows, dim), jnp.float32))
            _fixed(self.embed)
        self.subword_ids = nnx.data(None)
        if subword_buckets:
            self.subword_ids = SubwordBuckets(jnp.full((vocab_size, SLOTS), NO_NGRAM, jnp.int32))
            self.subword_embed = nnx.Embed(subword_rows or subword_buckets, dim, embedding_init=nnx.initializers.zeros,
                                           dtype=dtype, rngs=rngs)  # fmt: skip
        self.features = dim * (2 if static else 1)

    def fill(self, vectors=None, rows=None, subwords=None, trained_ids=None) -> None:
        """Fills the tables before training: ``vectors <float32>[vocab, dim]`` replace the ``rows <bool>[vocab]``
        (None: all, rescaled to the random initialisation's spread), the static channel copies the result,
        ``subwords <int32>[vocab, SLOTS]`` and ``trained_ids <int32>[R]`` (the ids whose rows train)."""
        table = self.embed.embedding
        if vectors is not None and rows is None:  # PPMI vectors have no natural scale
            table[...] = vectors * (jnp.std(table[...]) / jnp.maximum(jnp.std(vectors), 1e-8))
        elif vectors is not None:
            table[...] = jnp.where(rows[:, None], vectors, table[...])
        if self.static is not None:
            self.static.embedding[...] = table[...]
        if subwords is not None:
            self.subword_ids[...] = jnp.asarray(subwords, jnp.int32)
        if trained_ids is not None:
            self.embed_rows[...] = table[...][trained_ids]
            slots = jnp.arange(len(trained_ids), dtype=jnp.int32)
            self.row_slots[...] = self.row_slots[...].at[trained_ids].set(slots)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        if self.row_slots is None:
            x = self.embed(tokens)
        else:
            slots = self.row_slots[...][tokens]  # [B, T]
            frozen = jnp.take(self.embed.embedding[...], tokens, axis=0)
            trained = jnp.take(self.embed_rows[...], jnp.maximum(slots, 0), axis=0)
            x = jnp.where((slots >= 0)[..., None], trained, frozen).astype(self.embed.dtype)
        if self.subword_ids is not None:
            ids = self.subword_ids[...][tokens]  # [B, T, SLOTS]
            filled = (ids != NO_NGRAM)[..., None]
            total = jnp.sum(self.subword_embed(jnp.maximum(ids, 0)) * filled, axis=2)
            x = x + total / jnp.maximum(jnp.sum(filled, axis=2), 1).astype(x.dtype)
        if self.static is not None:
            static = jnp.take(self.static.embedding[...], tokens, axis=0)
            x = jnp.concatenate([x, static.astype(x.dtype)], axis=-1)
        return x


def _hidden(carry):
    """The hidden state h of a carry: the last part of (c, h) or (c, n, m, h), or the carry itself (GRU, RNN)."""
    return carry[-1] if isinstance(carry, tuple) else carry


def _last_outputs(outputs: jax.Array, lengths: jax.Array, bidirectional: bool) -> jax.Array:
    """The final hidden states read from the outputs, for the mLSTM, whose carry (C, n, m) holds no h: the forward
    direction's output at each sequence's last real token and the backward direction's at its first (where it
    ends). Empty sequences give zeros (their outputs are all zero)."""
    width = outputs.shape[-1] // (2 if bidirectional else 1)
    last = jnp.maximum(lengths - 1, 0)[:, None, None]
    forward = jnp.take_along_axis(outputs[..., :width], last, axis=1)[:, 0]
    return jnp.concatenate([forward, outputs[:, 0, width:]], axis=-1) if bidirectional else forward


class Pooling(nnx.Module):
    """The encoder's ``outputs <[B, T, D]>`` and ``carries`` -> ``features <float32>[B, D or 2D]``: ``last`` the
    final state of the top layer (both directions when bidirectional), the tutorial's choice; ``max`` the maximum
    over the real time steps; ``mean_max`` their mean and maximum side by side. Empty sequences pool to zeros."""

    def __init__(self, kind: str, cell: str, bidirectional: bool):
        if kind not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {kind!r}")
        self.kind, self.cell, self.bidirectional = kind, cell, bidirectional

    def features(self, width: int) -> int:
        """How many features it makes of an encoder output ``width`` wide."""
        return width * (2 if self.kind == "mean_max" else 1)

    def __call__(self, outputs: jax.Array, carries, lengths: jax.Array) -> jax.Array:
        if self.kind == "last" and self.cell == "mlstm":
            return _last_outputs(outputs, lengths, self.bidirectional)
        if self.kind == "last":  # from the carries: XLA then need not keep the per-step outputs at inference
            top = carries[-1]
            return jnp.concatenate([_hidden(top[0]), _hidden(top[1])], -1) if self.bidirectional else _hidden(top)
        outputs = outputs.astype(jnp.float32)
        real = (jnp.arange(outputs.shape[1])[None, :] < lengths[:, None])[..., None]  # [B, T, 1]
        maximum = jnp.where(lengths[:, None] > 0, jnp.max(jnp.where(real, outputs, -jnp.inf), axis=1), 0.0)
        if self.kind == "max":
            return maximum
        mean = jnp.sum(outputs, axis=1) / jnp.maximum(lengths, 1)[:, None]
        return jnp.concatenate([mean, maximum], axis=-1)


class Head(nnx.Module):
    """``features <[B, F]>`` -> ``logits <float32>[B]``: dropout (in training), then one linear unit."""

    def __init__(self, features: int, dropout_rate: float, *, rngs: nnx.Rngs):
        self.dropout = nnx.Dropout(dropout_rate)
        self.linear = nnx.Linear(features, 1, rngs=rngs)

    def __call__(self, features: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        features = self.dropout(features.astype(jnp.float32), deterministic=rngs is None, rngs=rngs)
        return self.linear(features)[:, 0]


class SentimentClassifier(nnx.Module):
    """``tokens <int32>[batch, time]``, ``lengths <int32>[batch]`` -> ``logits <float32>[batch]``.

    Word dropout (real tokens replaced by the unknown id), embedding dropout and the encoder's and head's dropout
    are active only when ``rngs`` with a ``dropout`` stream is passed (training). The n-gram scorer's logit is
    added at evaluation and prediction only: fitted on the same training texts, it is nearly always right there,
    and the recurrent model would learn nothing beside it.
    """

    def __init__(self, embedder: Embedder, encoder: nnx.Module, pooling: Pooling, head: Head, *,
                 ngrams: NgramScorer | None = None, embedding_dropout_rate: float = 0.0,
                 word_dropout_rate: float = 0.0):  # fmt: skip
        self.embedder, self.encoder, self.pooling, self.head, self.ngrams = embedder, encoder, pooling, head, ngrams
        self.embedding_dropout = nnx.Dropout(embedding_dropout_rate)
        self.word_dropout_rate = word_dropout_rate

    def __call__(self, tokens: jax.Array, lengths: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        deterministic = rngs is None
        read = tokens
        if not deterministic and self.word_dropout_rate > 0:
            dropped = jax.random.bernoulli(rngs.dropout(), self.word_dropout_rate, tokens.shape)
            read = jnp.where(dropped & (tokens != PAD_ID), UNKNOWN_ID, tokens)
        x = self.embedding_dropout(self.embedder(read), deterministic=deterministic, rngs=rngs)
        outputs, carries = self.encoder(x, lengths, rngs=rngs)
        logits = self.head(self.pooling(outputs, carries, lengths), rngs)
        if self.ngrams is None or not deterministic:
            return logits
        return logits + self.ngrams(tokens, lengths)


def build_model(config, sizes: DataSizes, rngs: nnx.Rngs, backend: str | None = None) -> SentimentClassifier:
    """The classifier a config describes, with the tables the data sized; ``backend`` overrides the config's
    (it changes how the recurrence runs, not what it computes)."""
    dtype = jnp.dtype(config.dtype)
    embedder = Embedder(sizes.vocab_size, config.embedding_dim, static=config.static_embeddings,
                        subword_buckets=config.subword_buckets, subword_rows=sizes.subword_rows,
                        trained_rows=sizes.trained_rows, dtype=dtype, rngs=rngs)  # fmt: skip
    encoder = make_recurrent(config.cell, embedder.features, config.hidden_size, num_layers=config.num_layers,
                             bidirectional=config.bidirectional, dropout_rate=config.dropout_rate,
                             unroll=config.unroll, backend=backend or config.backend,
                             recurrent_dropout_rate=config.recurrent_dropout_rate, dtype=dtype, rngs=rngs,
                             **({"num_heads": config.num_heads} if config.cell in XLSTM_CELLS else {}))  # fmt: skip
    pooling = Pooling(config.pooling, config.cell, config.bidirectional)
    head = Head(pooling.features(config.hidden_size * (2 if config.bidirectional else 1)), config.dropout_rate,
                rngs=rngs)  # fmt: skip
    ngrams = NgramScorer(config.ngram_buckets, config.ngram_order) if config.ngram_buckets else None
    return SentimentClassifier(embedder, encoder, pooling, head, ngrams=ngrams,
                               embedding_dropout_rate=config.embedding_dropout_rate,
                               word_dropout_rate=config.word_dropout_rate)  # fmt: skip


def check_model(config) -> None:
    """A one-line error when the model's settings do not fit together (cell, heads, regularisers, backend): the
    library's rules, applied by building the model's shapes, its message passed on."""
    try:
        nnx.eval_shape(lambda: build_model(config, DataSizes(vocab_size=3), nnx.Rngs(0)))
    except ValueError as error:
        settings = ", ".join(f"{key}={config[key]}" for key in ("cell", "hidden_size", "num_heads", "backend", "dtype")
                             if config[key])  # fmt: skip
        raise UserError(f"the --config settings do not fit together ({settings}): {error}") from None

