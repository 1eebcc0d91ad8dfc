"""Subword embeddings (``subword_buckets``) and the static embedding channel (``static_embeddings``)."""

import jax
import numpy as np
import pytest
from conftest import load_config
from flax import nnx
from jax.sharding import Mesh

from lstm_jax.sentiment import checkpoints as ckpt
from lstm_jax.sentiment.data.subwords import NO_NGRAM, SLOTS, compact_buckets, subword_ids, word_ngrams
from lstm_jax.sentiment.model.classifier import DataSizes, Embedder
from lstm_jax.sentiment.train.trainer import create_train_state, train_step


def test_a_word_is_the_bag_of_its_marked_character_3_to_5_grams():
    assert word_ngrams("film") == ["<fi", "fil", "ilm", "lm>", "<fil", "film", "ilm>", "<film", "film>"]
    assert word_ngrams("a") == ["<a>"]
    assert word_ngrams("aaaa") == ["<aa", "aaa", "aa>", "<aaa", "aaaa", "aaa>", "<aaaa", "aaaa>"]  # repeats once
    marked = "<extraordinarily>"  # 15 + 14 + 13 n-grams: the 3-grams, then the first 9 of the 4-grams
    expected = [marked[start : start + 3] for start in range(15)] + [marked[start : start + 4] for start in range(9)]
    assert len(expected) == SLOTS and word_ngrams("extraordinarily") == expected


def test_buckets_follow_the_vocabulary_ids_and_do_not_change_between_processes():
    table = subword_ids(["film", "films", "a"], 1 << 20)
    assert table.shape == (5, SLOTS) and table.dtype == np.int32
    assert (table[:2] == NO_NGRAM).all()  # padding and unknown
    # CRC-32, not Python's per-process salted hash(): pinned so a checkpoint's buckets mean the same forever.
    assert table[2, 0] == 643131 and table[2, 8] == 128892  # "<fi" and "film>"
    assert (table[2, 9:] == NO_NGRAM).all() and (table[4, 1:] == NO_NGRAM).all()
    shared = set(table[2][table[2] >= 0]) & set(table[3][table[3] >= 0])
    assert len(shared) == 6  # <fi fil ilm <fil film <film
    with pytest.raises(ValueError, match="subword buckets must be positive"):
        subword_ids(["film"], 0)


def test_compacting_keeps_the_buckets_training_reaches_and_sends_the_rest_to_one_row():
    table = subword_ids(["film", "films", "a", "zebra"], 1 << 20)
    compact, rows = compact_buckets(table, np.array([[2, 3, 0], [1, 0, 0]]))  # film and films occur; padding
    reached = sorted(set(table[2:4][table[2:4] != NO_NGRAM]))  # the 9 + 12 n-grams of film(s), 6 shared
    assert rows == len(reached) + 1 == 16
    assert ((compact == NO_NGRAM) == (table == NO_NGRAM)).all()
    for word in (2, 3):  # renumbered in bucket order, one to one
        filled = table[word] != NO_NGRAM
        np.testing.assert_array_equal(compact[word][filled], np.searchsorted(reached, table[word][filled]))
    assert (compact[4:][table[4:] != NO_NGRAM] == rows - 1).all()  # "a", "zebra": only buckets training never moves


def test_training_on_the_compacted_table_gives_every_word_the_same_vector_to_the_bit():
    """The compacted table is an exact reformulation: after training steps, every vocabulary word's input to
    the encoder (weights and moving average alike) equals the full table's, bit for bit."""
    config = load_config(embedding_init="ppmi_svd", subword_buckets=256, ema_decay=0.5)
    words = [f"w{index}ord{index % 7}" for index in range(48)]
    rng = np.random.default_rng(0)
    examples = {"tokens": rng.integers(0, 30, (8, 12)).astype(np.int32), "lengths": np.full(8, 12, np.int32),
                "labels": rng.integers(0, 2, 8).astype(np.int32)}  # fmt: skip; ids 30-49 never occur
    compact, rows = compact_buckets(subword_ids(words, 256), examples["tokens"])
    assert rows < 200
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    inputs = []
    for table, table_rows in ((subword_ids(words, 256), 0), (compact, rows)):
        state = create_train_state(config, DataSizes(50, table_rows), mesh, subwords=table)
        for _ in range(3):
            state = train_step(state.replace(batch=0), examples, np.arange(8, dtype=np.int32)[None], 12)
        every_word = np.arange(50, dtype=np.int32)[None]
        inputs.append([np.asarray(state.model(weights).embedder(every_word))
                       for weights in (state.params, state.ema)])  # fmt: skip
    assert inputs[0][0][0, 30:].any()  # the words training never saw have subword vectors too
    for full, compacted in zip(*inputs):
        np.testing.assert_array_equal(full, compacted)


def _embedder():
    model = Embedder(5, 3, static=True, subword_buckets=8, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for embed in (model.embed, model.static, model.subword_embed):
        embed.embedding[...] = rng.normal(size=embed.embedding.shape).astype(np.float32)
    model.subword_ids[...] = subword_ids(["film", "films", "a"], 8)
    return model


def test_the_encoder_reads_the_word_plus_its_subword_mean_beside_the_static_channel():
    model = _embedder()
    tokens = np.array([[2, 3, 4, 1, 0]], np.int32)
    embedded = np.asarray(model(tokens))
    assert embedded.shape == (1, 5, 6) and model.features == 6
    table, buckets = np.asarray(model.embed.embedding[...]), subword_ids(["film", "films", "a"], 8)
    for position, token in enumerate(tokens[0]):
        filled = buckets[token][buckets[token] != NO_NGRAM]
        subwords = np.asarray(model.subword_embed.embedding[...])[filled].mean(axis=0) if len(filled) else 0.0
        np.testing.assert_allclose(embedded[0, position, :3], table[token] + subwords, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(embedded[0, position, 3:], np.asarray(model.static.embedding[token]))


def test_training_moves_the_subword_vectors_but_not_the_static_channel_or_the_buckets():
    config = load_config(embedding_init="ppmi_svd", static_embeddings=True, subword_buckets=64, ema_decay=0.5)
    words = [f"w{index}ord" for index in range(48)]
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    state = create_train_state(config, DataSizes(50), mesh, subwords=subword_ids(words, 64))
    before = jax.tree.map(np.asarray, ckpt.named_leaves(state))
    # The fixed tables are not parameters: nothing differentiates, updates or averages them; ids stay integers.
    assert not any("static" in name or "subword_ids" in name for name in before if name.startswith("params/"))
    np.testing.assert_array_equal(before["tables/embedder/static/embedding"], before["params/embedder/embed/embedding"])
    np.testing.assert_array_equal(before["tables/embedder/subword_ids"], subword_ids(words, 64))
    assert before["tables/embedder/subword_ids"].dtype == np.int32
    assert not before["params/embedder/subword_embed/embedding"].any()  # training starts from the word vectors alone
    rng = np.random.default_rng(0)
    examples = {"tokens": rng.integers(2, 50, (8, 12)).astype(np.int32), "lengths": np.full(8, 12, np.int32),
                "labels": rng.integers(0, 2, 8).astype(np.int32)}  # fmt: skip
    for _ in range(2):
        state = train_step(state.replace(batch=0), examples, np.arange(8, dtype=np.int32)[None], 12)
    after = jax.tree.map(np.asarray, ckpt.named_leaves(state))
    for name in ("tables/embedder/static/embedding", "tables/embedder/subword_ids"):
        np.testing.assert_array_equal(after[name], before[name])
    for kind in ("params", "ema"):
        assert not np.array_equal(after[f"{kind}/embedder/embed/embedding"], before["params/embedder/embed/embedding"])
    trained = np.abs(after["params/embedder/subword_embed/embedding"]).sum(axis=1) > 0
    assert trained[np.unique(subword_ids(words, 64)[examples["tokens"]])].all()  # every bucket in the batch


def test_a_run_keeps_only_the_buckets_training_reaches_and_resumes_with_them(review_files, tmp_path):
    import json

    from lstm_jax.sentiment.deploy.predict import restore_model
    from lstm_jax.sentiment.train.trainer import train_and_evaluate

    train, test = review_files
    settings = dict(train_path=str(train), test_path=str(test), subword_buckets=1 << 12)
    train_and_evaluate(load_config(**settings, num_epochs=1), tmp_path)
    first = restore_model(tmp_path)
    rows = first.sizes.subword_rows
    words = first.vocabulary.words
    reached = {bucket for row in subword_ids(words, 1 << 12) for bucket in row if bucket != NO_NGRAM}
    assert rows <= len(reached) + 1 < 1 << 12  # the training texts use the vocabulary's words, maybe not all
    assert first.model.embedder.subword_embed.embedding.shape == (rows, first.config.embedding_dim)
    train_and_evaluate(load_config(**settings, num_epochs=2), tmp_path)  # resumes the run for one more epoch
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # two epochs and the test
    assert restore_model(tmp_path).sizes.subword_rows == rows
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])["epoch"] == 2
