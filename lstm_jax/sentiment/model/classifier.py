"""The sentiment classifier: Embedding -> recurrent encoder -> pooled features -> Dense(1) logit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lstm_jax.recurrent import make_recurrent
from lstm_jax.sentiment.data.subwords import NO_NGRAM, SLOTS
from lstm_jax.sentiment.model.ngrams import ORDERS, ngram_logits
from lstm_jax.sentiment.tokenizer import PAD_ID, UNKNOWN_ID

POOLINGS = ("last", "max", "mean_max")
XLSTM_CELLS = ("slstm", "mlstm")  # they take num_heads


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


class NgramTable(nnx.Variable):
    """A fitted, never-trained weight of the n-gram scorer (the optimizer leaves it as it is)."""


class RowSlots(nnx.Variable):
    """Each vocabulary id's row in the trained table ``embed_rows`` (-1: a word training never reads, whose row
    stays in the frozen full table): filled before training, never trained (frozen by name)."""


class SubwordBuckets(nnx.Variable):
    """The vocabulary words' character n-gram buckets (:func:`.subwords.subword_ids`): filled before training,
    never trained (frozen by name, like the n-gram table)."""


class NgramScorer(nnx.Module):
    """``tokens <int32>[B, T]``, ``lengths <int32>[B]`` -> ``logits <float32>[B]`` of the linear n-gram model of
    :mod:`.ngrams`: ``bias + sum of table[bucket]`` over each text's distinct word 1- to ``order``-grams.
    ``table <float32>[buckets]`` and ``bias`` are filled by :func:`.ngrams.fit_ngram_scorer` before training."""

    def __init__(self, buckets: int, order: int = 2):
        if buckets & (buckets - 1):
            raise ValueError(f"ngram_buckets must be a power of two, got {buckets}")
        if order not in ORDERS:
            raise ValueError(f"ngram_order must be one of {ORDERS}, got {order}")
        self.order = order
        self.table = NgramTable(jnp.zeros((buckets,), jnp.float32))
        self.bias = NgramTable(jnp.zeros((), jnp.float32))

    def __call__(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        return ngram_logits(self.table[...], self.bias[...], tokens, lengths, self.order)


def _with_ngrams(ngrams: NgramScorer | None, logits: jax.Array, tokens, lengths, deterministic: bool) -> jax.Array:
    """Adds the n-gram scorer's logit at evaluation and prediction. Training leaves it out: fitted on the same
    training texts, it is nearly always right there, and the recurrent model would learn nothing beside it."""
    if ngrams is None or not deterministic:
        return logits
    return logits + ngrams(tokens, lengths)


class SentimentClassifier(nnx.Module):
    """``tokens <int32>[batch, time]``, ``lengths <int32>[batch]`` -> ``logits <float32>[batch]``.

    ``pooling``: ``last`` uses the final state of the last layer (both directions when bidirectional),
    the tutorial's choice; ``max`` takes the maximum over the real time steps of the top layer's
    outputs; ``mean_max`` concatenates their mean and maximum. Dropout (on embeddings, between layers and
    before the head) and word dropout (real tokens replaced by the unknown id) are active only when
    ``rngs`` with a ``dropout`` stream is passed. ``word_scores`` adds a linear bag-of-words path: a
    learned score per word, averaged over the real tokens and added to the logit. ``ngram_buckets > 0`` adds
    an :class:`NgramScorer`'s logit at evaluation (not in training). ``perturbation <[batch, time,
    embedding_dim]>``, when given, is added to the embedded tokens (adversarial training, see ``train_step``).

    What the encoder reads for token ``w`` (:meth:`embed_tokens`)::

        e_w = embed_rows[row_slots[w]] if row_slots[w] >= 0 else embed[w]   (with trained_rows; else embed[w])
        x_w = e_w + mean_k subword_embed[subword_ids[w, k]]    (over w's filled slots; with subword_buckets)
        x_w = concat(x_w, static_embed[w])                          (with static_embeddings: width 2E)

    ``subword_ids <[vocab_size, SLOTS]>`` holds the hashed character n-grams of each word (:mod:`.subwords`),
    filled before training, never trained; ``subword_embed <[subword_rows or subword_buckets, E]>`` starts at
    zero, so training starts from ``embed`` alone (``subword_rows``: the job keeps only the buckets training
    reaches, :func:`.subwords.compact_buckets`). ``static_embed <[vocab_size, E]>`` is a copy of ``embed``'s
    initial vectors that training leaves as it is (Kim 2014's "static" channel): words seen in training move in
    the trained channel, and both they and words only the pretrained vectors know keep their place in the static
    one. ``trained_rows > 0`` (the job's choice when the vocabulary holds words only the pretrained vectors know):
    only the rows of words the training texts contain are trained, in ``embed_rows <[trained_rows, E]>``, which
    starts as their rows of ``embed``; ``embed`` itself is then frozen (``row_slots <[vocab_size]>`` says which
    row a word reads). Training would never move the other rows, so the model computes the same, with the
    optimizer's work shrunk to the rows it can move.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        cell: str = "lstm",
        num_layers: int = 1,
        bidirectional: bool = False,
        pooling: str = "last",
        dropout_rate: float = 0.0,
        embedding_dropout_rate: float = 0.0,
        word_dropout_rate: float = 0.0,
        word_scores: bool = False,
        ngram_buckets: int = 0,
        ngram_order: int = 2,
        unroll: int = 1,
        backend: str = "auto",
        proj_size: int = 0,
        num_heads: int = 1,
        recurrent_dropout_rate: float = 0.0,
        zoneout_rate: float = 0.0,
        static_embeddings: bool = False,
        subword_buckets: int = 0,
        subword_rows: int = 0,
        trained_rows: int = 0,
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.word_dropout_rate = word_dropout_rate
        compute_dtype = jnp.dtype(dtype)
        self.embed = nnx.Embed(vocab_size, embedding_dim, dtype=compute_dtype, rngs=rngs)
        self.static_embed = (nnx.Embed(vocab_size, embedding_dim, dtype=compute_dtype, rngs=rngs)
                             if static_embeddings else None)  # fmt: skip
        self.row_slots = nnx.data(None)
        if trained_rows:  # float32 like the subword buckets below (exact below 2**24)
            self.row_slots = RowSlots(jnp.full((vocab_size,), -1.0, jnp.float32))
            # A plain parameter, filled from ``embed`` before training: it draws no key from ``rngs``, so every
            # other weight (and every ensemble member's) starts as it would without it.
            self.embed_rows = nnx.Param(jnp.zeros((trained_rows, embedding_dim), jnp.float32))
        self.subword_ids = nnx.data(None)
        if subword_buckets:
            # Bucket numbers stored as float32 (exact below 2**24): the train step differentiates every weight of
            # the model, and an integer array cannot be differentiated.
            self.subword_ids = SubwordBuckets(jnp.full((vocab_size, SLOTS), NO_NGRAM, jnp.float32))
            self.subword_embed = nnx.Embed(subword_rows or subword_buckets, embedding_dim,
                                           embedding_init=nnx.initializers.zeros, dtype=compute_dtype,
                                           rngs=rngs)  # fmt: skip
        self.encoder = make_recurrent(
            cell,
            embedding_dim * (2 if static_embeddings else 1),
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            dropout_rate=dropout_rate,
            unroll=unroll,
            backend=backend,
            recurrent_dropout_rate=recurrent_dropout_rate,
            zoneout_rate=zoneout_rate,
            dtype=compute_dtype,
            rngs=rngs,
            **({"proj_size": proj_size} if proj_size else {}),
            **({"num_heads": num_heads} if cell in XLSTM_CELLS else {}),
        )
        self.bidirectional = bidirectional
        self.cell = cell
        features = (proj_size or hidden_size) * (2 if bidirectional else 1) * (2 if pooling == "mean_max" else 1)
        self.embedding_dropout = nnx.Dropout(embedding_dropout_rate)
        self.dropout = nnx.Dropout(dropout_rate)
        self.head = nnx.Linear(features, 1, rngs=rngs)
        # Optional linear bag-of-words path beside the recurrent one ("wide and deep"): one learned score per
        # word, averaged over the real tokens and added to the logit.
        self.word_scores = (
            nnx.Embed(vocab_size, 1, embedding_init=nnx.initializers.zeros, rngs=rngs) if word_scores else None
        )
        self.ngrams = NgramScorer(ngram_buckets, ngram_order) if ngram_buckets else None

    def member_logits(self, tokens, lengths, *, rngs: nnx.Rngs | None = None, perturbations=None) -> jax.Array:
        """<float32>[1, batch]: the same interface as :class:`SentimentEnsemble` (``perturbations <[1, batch,
        time, embedding_dim]>``)."""
        perturbation = None if perturbations is None else perturbations[0]
        return self(tokens, lengths, rngs=rngs, perturbation=perturbation)[None]

    def classifiers(self) -> list[SentimentClassifier]:
        return [self]

    def embed_tokens(self, tokens: jax.Array, perturbation: jax.Array | None = None) -> jax.Array:
        """``tokens <int32>[B, T]`` -> ``<[B, T, E or 2E]>``: the encoder's input (see the class docstring);
        ``perturbation`` moves the trained channel only."""
        # The frozen tables are read through stop_gradient: their gradients (scatters into tables of the
        # vocabulary's size) would be thrown away by the optimizer, and this way the compiler drops them.
        if self.row_slots is None:
            x = self.embed(tokens)
        else:
            slots = jnp.round(jax.lax.stop_gradient(self.row_slots[...])[tokens]).astype(jnp.int32)  # [B, T]
            frozen = jnp.take(jax.lax.stop_gradient(self.embed.embedding[...]), tokens, axis=0)
            trained = jnp.take(self.embed_rows[...], jnp.maximum(slots, 0), axis=0)
            x = jnp.where((slots >= 0)[..., None], trained, frozen).astype(self.embed.dtype)
        if self.subword_ids is not None:
            # Rounded, not truncated: a moving average of the weights may leave a stored number an ulp off.
            ids = jnp.round(jax.lax.stop_gradient(self.subword_ids[...])[tokens]).astype(jnp.int32)  # [B, T, SLOTS]
            filled = (ids != NO_NGRAM)[..., None]
            total = jnp.sum(self.subword_embed(jnp.maximum(ids, 0)) * filled, axis=2)
            x = x + total / jnp.maximum(jnp.sum(filled, axis=2), 1).astype(x.dtype)
        if perturbation is not None:
            x = x + perturbation.astype(x.dtype)
        if self.static_embed is not None:
            static = jnp.take(jax.lax.stop_gradient(self.static_embed.embedding[...]), tokens, axis=0)
            x = jnp.concatenate([x, static.astype(x.dtype)], axis=-1)
        return x

    def __call__(self, tokens: jax.Array, lengths: jax.Array, *, rngs: nnx.Rngs | None = None,
                 perturbation: jax.Array | None = None) -> jax.Array:
        deterministic = rngs is None
        if not deterministic and self.word_dropout_rate > 0:
            # Word dropout: real tokens become "unknown" at random, so no single word decides the label.
            dropped = jax.random.bernoulli(rngs.dropout(), self.word_dropout_rate, tokens.shape)
            tokens = jnp.where(dropped & (tokens != PAD_ID), UNKNOWN_ID, tokens)
        x = self.embed_tokens(tokens, perturbation)
        x = self.embedding_dropout(x, deterministic=deterministic, rngs=rngs)
        outputs, carries = self.encoder(x, lengths, rngs=rngs)
        if self.pooling == "last" and self.cell == "mlstm":
            features = _last_outputs(outputs, lengths, self.bidirectional)
        elif self.pooling == "last":  # from the carries: XLA then need not keep the per-step outputs at inference
            top = carries[-1]
            features = jnp.concatenate([_hidden(top[0]), _hidden(top[1])], -1) if self.bidirectional else _hidden(top)
        else:
            outputs = outputs.astype(jnp.float32)
            real = (jnp.arange(outputs.shape[1])[None, :] < lengths[:, None])[..., None]  # [B, T, 1]
            # Empty sequences (length 0) pool to zeros rather than -inf.
            maximum = jnp.where(lengths[:, None] > 0, jnp.max(jnp.where(real, outputs, -jnp.inf), axis=1), 0.0)
            if self.pooling == "max":
                features = maximum
            else:
                mean = jnp.sum(outputs, axis=1) / jnp.maximum(lengths, 1)[:, None]
                features = jnp.concatenate([mean, maximum], axis=-1)
        features = self.dropout(features.astype(jnp.float32), deterministic=deterministic, rngs=rngs)
        logits = self.head(features)[:, 0]
        if self.word_scores is not None:
            scores = self.word_scores(tokens)[..., 0].astype(jnp.float32) * (tokens != PAD_ID)
            logits = logits + jnp.sum(scores, axis=1) / jnp.maximum(lengths, 1)
        return _with_ngrams(self.ngrams, logits, tokens, lengths, deterministic)  # eval only: tokens as given


class SentimentEnsemble(nnx.Module):
    """``size`` independently initialised classifiers trained side by side on the same batches.

    Each member gets its own loss (``member_logits``), so members do not co-adapt: this is an ordinary
    ensemble trained in one loop. Predictions average the members' logits. One n-gram scorer
    (``ngram_buckets``) serves the whole ensemble: its logit is added to every member's at evaluation.
    """

    def __init__(self, *, size: int, rngs: nnx.Rngs, ngram_buckets: int = 0, ngram_order: int = 2, **kwargs):
        self.members = nnx.List([SentimentClassifier(**kwargs, rngs=rngs) for _ in range(size)])
        self.ngrams = NgramScorer(ngram_buckets, ngram_order) if ngram_buckets else None

    def member_logits(self, tokens, lengths, *, rngs: nnx.Rngs | None = None, perturbations=None) -> jax.Array:
        """<float32>[members, batch]; ``perturbations <[members, batch, time, embedding_dim]>``: one per member,
        added to its embedded tokens."""
        logits = jnp.stack([member(tokens, lengths, rngs=rngs,
                                   perturbation=None if perturbations is None else perturbations[index])
                            for index, member in enumerate(self.members)])  # fmt: skip
        return _with_ngrams(self.ngrams, logits, tokens, lengths, rngs is None)

    def __call__(self, tokens, lengths, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        return jnp.mean(self.member_logits(tokens, lengths, rngs=rngs), axis=0)

    def classifiers(self) -> list[SentimentClassifier]:
        return list(self.members)


def build_model(kwargs: dict, rngs: nnx.Rngs) -> SentimentClassifier | SentimentEnsemble:
    """The classifier described by ``model_kwargs`` (an ensemble when ``ensemble_size > 1``)."""
    kwargs = dict(kwargs)
    size = kwargs.pop("ensemble_size", 1)
    if size > 1:
        return SentimentEnsemble(size=size, rngs=rngs, **kwargs)
    return SentimentClassifier(**kwargs, rngs=rngs)


def model_kwargs(config, vocab_size: int, subword_rows: int = 0, trained_rows: int = 0) -> dict:
    """The constructor arguments taken from a config and the data (the vocabulary's size; the rows of the
    compacted subword table, 0 = one per bucket; the trained embedding rows, 0 = all); saved in checkpoints so
    predict needs no config."""
    return dict(
        vocab_size=vocab_size,
        embedding_dim=config.embedding_dim,
        hidden_size=config.hidden_size,
        cell=config.cell,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
        pooling=config.pooling,
        dropout_rate=config.dropout_rate,
        embedding_dropout_rate=config.embedding_dropout_rate,
        word_dropout_rate=config.word_dropout_rate,
        word_scores=config.word_scores,
        ngram_buckets=config.ngram_buckets,
        ngram_order=config.ngram_order,
        unroll=config.unroll,
        backend=config.backend,
        proj_size=config.proj_size,
        num_heads=config.num_heads,
        recurrent_dropout_rate=config.recurrent_dropout_rate,
        zoneout_rate=config.zoneout_rate,
        static_embeddings=config.static_embeddings,
        subword_buckets=config.subword_buckets,
        subword_rows=subword_rows,
        trained_rows=trained_rows,
        dtype=config.dtype,
        ensemble_size=config.ensemble_size,
    )
