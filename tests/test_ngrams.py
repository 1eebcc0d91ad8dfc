"""The n-gram scorer (lstm_jax/sentiment/model/ngrams.py and its place in the model and the job)."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from flax import nnx

from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.model.classifier import DataSizes, build_model
from lstm_jax.sentiment.model.ngrams import HASH_MULTIPLIERS, fit_ngram_scorer, ngram_ids, ngram_logits
from lstm_jax.sentiment.tokenizer import Vocabulary


def _bucket(first: int, second: int, log2_buckets: int) -> int:
    return ((first * HASH_MULTIPLIERS[0] + second * HASH_MULTIPLIERS[1]) % (1 << 32)) >> (32 - log2_buckets)


def _trigram_bucket(a: int, b: int, c: int, log2_buckets: int) -> int:
    return ((a * HASH_MULTIPLIERS[0] + b * HASH_MULTIPLIERS[1] + c * HASH_MULTIPLIERS[2]) % (1 << 32)) >> (
        32 - log2_buckets
    )


def _reference_logits(table, bias, tokens, lengths, order=2):
    """Plain Python: the set of a text's unigram (a, 0), bigram (a, b) and (order 3) trigram (a, b, c) buckets,
    each counted once."""
    log2 = int(np.log2(len(table)))
    logits = []
    for row, length in zip(tokens.tolist(), lengths.tolist()):
        words = row[:length]
        buckets = {_bucket(a, 0, log2) for a in words} | {_bucket(a, b, log2) for a, b in zip(words, words[1:])}
        if order == 3:
            buckets |= {_trigram_bucket(a, b, c, log2) for a, b, c in zip(words, words[1:], words[2:])}
        logits.append(bias + sum(table[k] for k in buckets))
    return np.asarray(logits, np.float32)


def test_ids_hash_unigrams_and_bigrams_and_count_each_once():
    tokens = np.array([[5, 6, 5, 6, 0], [7, 0, 0, 0, 0], [0, 0, 0, 0, 0], [3, 3, 3, 3, 9]], np.int32)
    lengths = np.array([4, 1, 0, 4], np.int32)  # the 9 of the last row lies past its length
    ids, counted = (np.asarray(x) for x in ngram_ids(jnp.asarray(tokens), jnp.asarray(lengths), 20))
    assert ids.shape == counted.shape == (4, 9)
    assert ids[0, 0] == _bucket(5, 0, 20) and ids[0, 5] == _bucket(5, 6, 20) and ids[0, 6] == _bucket(6, 5, 20)
    counted_buckets = [sorted(ids[row][counted[row]].tolist()) for row in range(4)]
    assert counted_buckets[0] == sorted({_bucket(5, 0, 20), _bucket(6, 0, 20), _bucket(5, 6, 20), _bucket(6, 5, 20)})
    assert counted_buckets[1] == [_bucket(7, 0, 20)]
    assert counted_buckets[2] == []
    assert counted_buckets[3] == sorted([_bucket(3, 0, 20), _bucket(3, 3, 20)])


def test_logits_equal_a_plain_python_reference_with_colliding_buckets():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 30, (16, 12)).astype(np.int32)
    lengths = rng.integers(0, 13, 16).astype(np.int32)
    tokens[np.arange(12)[None] >= lengths[:, None]] = 0
    for buckets in (16, 1 << 20):  # 16: many n-grams share a bucket, which then counts once
        table = rng.normal(size=buckets).astype(np.float32)
        for order in (2, 3):
            got = ngram_logits(jnp.asarray(table), jnp.float32(0.5), jnp.asarray(tokens), jnp.asarray(lengths), order)
            want = _reference_logits(table, 0.5, tokens, lengths, order)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{buckets} buckets, order {order}")


@pytest.mark.parametrize("time", [1, 2, 3, 5])
def test_order_three_adds_trigrams_after_the_same_unigram_and_bigram_ids(time):
    """A table fitted with 1-2-grams keeps its meaning: order 3 appends the trigrams, including for texts
    shorter than a trigram (and a 1-token batch, which has no bigram column at all)."""
    tokens = np.array([[4, 9, 4, 9, 7][:time], [8] * time], np.int32)
    lengths = np.array([time, time], np.int32)
    two = [np.asarray(x) for x in ngram_ids(jnp.asarray(tokens), jnp.asarray(lengths), 20, 2)]
    three = [np.asarray(x) for x in ngram_ids(jnp.asarray(tokens), jnp.asarray(lengths), 20, 3)]
    assert two[0].shape == (2, 2 * time - 1) and three[0].shape == (2, 3 * time - 2)
    np.testing.assert_array_equal(three[0][:, : 2 * time - 1], two[0])
    np.testing.assert_array_equal(three[1][:, : 2 * time - 1], two[1])
    trigrams = three[0][0, 2 * time - 1 :][three[1][0, 2 * time - 1 :]].tolist()
    words = tokens[0].tolist()
    assert sorted(trigrams) == sorted({_trigram_bucket(a, b, c, 20) for a, b, c in zip(words, words[1:], words[2:])})
    assert three[1][1, 2 * time - 1 :].sum() == (time >= 3)  # "8 8 8 ..." has one distinct trigram


def _texts(rng, count):
    """Labels a bag of words cannot give: "good"/"not bad" positive, "bad"/"not good" negative."""
    phrases = {"good": 1, "not good": 0, "bad": 0, "not bad": 1}
    filler = "the film a story was it and of".split()
    texts, labels = [], []
    for index in range(count):
        phrase = list(phrases)[index % 4]
        words = list(rng.choice(filler, 5))
        at = int(rng.integers(0, 6))
        texts.append(" ".join(words[:at] + [phrase] + words[at:]))
        labels.append(phrases[phrase])
    return texts, np.asarray(labels)


def test_fit_learns_what_only_bigrams_tell_and_chooses_c_on_validation():
    rng = np.random.default_rng(0)
    (train_texts, train_labels), (val_texts, val_labels) = _texts(rng, 200), _texts(rng, 40)
    vocabulary = Vocabulary.fit(train_texts, 100)
    train, validation = vocabulary.encode(train_texts, 12), vocabulary.encode(val_texts, 12)
    fit = fit_ngram_scorer((*train, train_labels), (*validation, val_labels), log2_buckets=16)
    assert set(fit.validation_accuracy) == {0.3, 1.0, 3.0} and fit.strength in fit.validation_accuracy
    assert fit.validation_accuracy[fit.strength] == max(fit.validation_accuracy.values())
    logits = np.asarray(ngram_logits(jnp.asarray(fit.table), fit.bias, *map(jnp.asarray, validation)))
    # Any weighting of single words gets at most 3 of the 4 phrases right (75%): the bigrams carry the rest.
    assert np.mean((logits > 0) == (val_labels == 1)) == fit.validation_accuracy[fit.strength] >= 0.95
    # A weight for every n-gram of the training texts, and nowhere else.
    rows = [row[:length] for row, length in zip(train[0].tolist(), train[1].tolist())]
    seen = {_bucket(a, 0, 16) for row in rows for a in row} | {_bucket(a, b, 16) for row in rows
                                                                for a, b in zip(row, row[1:])}  # fmt: skip
    assert fit.table.shape == (1 << 16,) and set(np.flatnonzero(fit.table)) == seen
    assert "C=" in fit.describe() and "chosen on validation" in fit.describe()


def _model(**overrides):
    config = load_config(**{"embedding_dim": 4, "hidden_size": 3, "pooling": "mean_max", "ngram_buckets": 64,
                            "dropout_rate": 0.2, **overrides})  # fmt: skip
    return build_model(config, DataSizes(vocab_size=20), nnx.Rngs(0))


def test_model_adds_the_scorer_at_evaluation_only():
    model = _model()
    tokens = jnp.array([[2, 3, 4, 0], [5, 5, 0, 0]], jnp.int32)
    lengths = jnp.array([3, 2], jnp.int32)
    before = model(tokens, lengths)
    before_training = model(tokens, lengths, rngs=nnx.Rngs(dropout=1))
    model.ngrams.fill(jnp.arange(64, dtype=jnp.float32), jnp.float32(-1.0))
    shift = ngram_logits(model.ngrams.table[...], model.ngrams.bias[...], tokens, lengths)
    np.testing.assert_allclose(model(tokens, lengths), before + shift, rtol=1e-6)
    np.testing.assert_allclose(model(tokens, lengths, rngs=nnx.Rngs(dropout=1)), before_training)
    assert float(jnp.max(jnp.abs(shift))) > 1.0


def test_training_never_changes_the_fitted_table(review_files, tmp_path):
    from lstm_jax.sentiment.deploy.predict import load_predictor
    from lstm_jax.sentiment.train.trainer import train_and_evaluate

    train, test = review_files
    config = load_config(train_path=str(train), test_path=str(test), ngram_buckets=1 << 12, num_epochs=2)
    train_and_evaluate(config, tmp_path)
    predictor = load_predictor(tmp_path)
    table = np.asarray(predictor.model.ngrams.table[...])
    assert np.count_nonzero(table) > 10  # fitted, and still there after two epochs
    # The same fit as the job's, from the same data: training left the table as it was fitted.
    from lstm_jax.sentiment.data import datasets as data

    splits = data.load_splits(config)
    encode = lambda split: predictor.vocabulary.encode(split.texts, config.max_len)  # noqa: E731
    fit = fit_ngram_scorer((*encode(splits.train), splits.train.labels),
                           (*encode(splits.validation), splits.validation.labels), 12)  # fmt: skip
    np.testing.assert_allclose(table, fit.table, rtol=1e-5, atol=1e-6)
    assert float(predictor.model.ngrams.bias[...]) == pytest.approx(fit.bias, abs=1e-5)


def test_bucket_count_must_be_a_power_of_two():
    from lstm_jax.sentiment.config import validate

    with pytest.raises(UserError, match=r"--config.ngram_buckets=1000 must be a power of two"):
        validate(load_config(ngram_buckets=1000))
    with pytest.raises(ValueError, match="power of two"):
        _model(ngram_buckets=48)
    assert _model(ngram_buckets=0).ngrams is None


def test_logistic_regression_equals_scikit_learns():
    """Our objective (mean loss + |w|^2 / (2 C N), bias free) is scikit-learn's (C * summed loss + |w|^2 / 2)."""
    import scipy.sparse
    from sklearn.linear_model import LogisticRegression

    from lstm_jax.sentiment.model.ngrams import _fit_logistic

    rng = np.random.default_rng(3)
    features = scipy.sparse.random(300, 40, density=0.1, random_state=4, format="csr") * 2.0
    labels = (features @ rng.normal(size=40) + 0.3 * rng.normal(size=300) > 0).astype(int)
    theta = _fit_logistic(features, labels, 0.5, np.zeros(41))
    reference = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(features, labels)
    np.testing.assert_allclose(theta[:-1], reference.coef_[0], atol=1e-4)
    assert theta[-1] == pytest.approx(reference.intercept_[0], abs=1e-4)
