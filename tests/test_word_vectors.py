"""Pretrained word vectors (GloVe / word2vec / fastText text files) for the job, and the job's new cell options."""

import gzip

import jax
import numpy as np
import pytest
from conftest import load_config
from test_job import run_tool, smoke_args
from test_reliability import one_line_error, predict

from lstm_jax.sentiment.config import validate
from lstm_jax.sentiment.embeddings import read_word_vectors
from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.tokenizer import Vocabulary

DIM = 3
VOCABULARY = Vocabulary(["the", "film", "don't", "good", "plot"])  # ids 2..6
# 9 real tokens: "the film <unk> the" and "don't good plot the film".
TRAIN = np.array([[2, 3, 1, 2, 0, 0], [4, 5, 6, 2, 3, 0]])
LINES = [
    "the 0.1 0.2 0.3",
    "Film 1 2 3",  # normalised to "film"
    "film 9 9 9",  # a later line for the same word: the first wins
    "don't -1 -2 -3",
    "new_york 5 5 5",  # two tokens for our tokenizer: not a word of ours
    ", 7 7 7",  # no token at all
    "zebra 4 4 4",  # not in the vocabulary
]
EXPECTED = {2: [0.1, 0.2, 0.3], 3: [1, 2, 3], 4: [-1, -2, -3]}


def write(path, lines, header=None, compress=False):
    text = "\n".join(([header] if header else []) + lines) + "\n"
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name, header, compress",
    [("glove.txt", None, False), ("wiki.vec", f"{len(LINES)} {DIM}", False), ("glove.txt.gz", None, True),
     ("cc.en.vec.gz", f"{len(LINES)} {DIM}", True)],
)  # fmt: skip
def test_text_formats_match_the_vocabulary_with_our_normalisation(tmp_path, name, header, compress):
    path = write(tmp_path / name, LINES, header, compress)
    initial, coverage = read_word_vectors(path, VOCABULARY, DIM, TRAIN)
    assert sorted(np.flatnonzero(initial.rows)) == sorted(EXPECTED)
    for index, vector in EXPECTED.items():
        np.testing.assert_allclose(initial.vectors[index], vector)
    assert (coverage.words_found, coverage.words) == (3, 5)
    # Found: the x3, film x2, don't x1 = 6 of the 9 real training tokens (the unknown one is never found).
    assert coverage.token_share == pytest.approx(6 / 9)
    assert "3 of 5 vocabulary words (60.0%), 66.7% of training tokens" == str(coverage)


@pytest.mark.parametrize(
    "lines, header, message",
    [
        (["the 1 2 3 4"], None, "have 4 dimensions, --config.embedding_dim is 3; set --config.embedding_dim=4"),
        (["the 1 2 3"], "1 300", "have 300 dimensions"),
        (["the 1 2 3", "film 1 2"], None, ":2 is not a line of a text vector file"),
        (["the 1 2 x"], None, ":1: a value is not a number"),
        (["zebra 1 2 3", "the 1 nan 3"], None, ":2: a value is not finite or beyond"),
        (["the 1 inf 3"], None, ":1: a value is not finite"),
        (["the 1 1e30 3"], None, ":1: a value is not finite or beyond ±10000"),
        (["zebra 1 2 3"], None, "no word of the vocabulary has a vector in .*0% coverage"),
        ([], "0 3", "no word of the vocabulary has a vector"),  # a header only
    ],
)
def test_bad_vector_files_are_one_line_errors(tmp_path, lines, header, message):
    path = write(tmp_path / "v.txt", lines, header)
    with pytest.raises(UserError, match=message) as error:
        read_word_vectors(path, VOCABULARY, DIM, TRAIN)
    assert "\n" not in str(error.value)


def test_missing_and_binary_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="cannot read word vectors from .*No such file"):
        read_word_vectors(tmp_path / "absent.txt", VOCABULARY, DIM, TRAIN)
    binary = tmp_path / "vectors.bin"
    binary.write_bytes(b"2 3\nthe \x00\x00\x80\x3f \xff\xfe\x00\x00 \x01\x02\x03\x04\n")
    with pytest.raises(UserError, match="vectors.bin:2 is not a line of a text vector file.*binary word2vec"):
        read_word_vectors(binary, VOCABULARY, DIM, TRAIN)


def test_empty_and_truncated_compressed_files_are_one_line_errors(tmp_path):
    empty = tmp_path / "e.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="0% coverage"):
        read_word_vectors(empty, VOCABULARY, DIM, TRAIN)
    whole = write(tmp_path / "v.txt.gz", LINES * 200, compress=True).read_bytes()
    truncated = tmp_path / "t.txt.gz"
    truncated.write_bytes(whole[: len(whole) // 2])  # `head -c` of a .gz: an EOFError, which has no strerror
    with pytest.raises(UserError, match="cannot read word vectors from .*t.txt.gz: .*check --config.embedding_path"):
        read_word_vectors(truncated, VOCABULARY, DIM, TRAIN)


def test_odd_words_do_not_stop_a_real_file(tmp_path):
    """Real files hold words that are not UTF-8 (a cp1252 dash) or contain spaces, and end lines with a space."""
    path = tmp_path / "real.vec"
    path.write_bytes(b"3 3\n\x97 1 1 1 \n. . . 2 2 2 \nfilm 1 2 3 \n")
    initial, coverage = read_word_vectors(path, VOCABULARY, DIM, TRAIN)
    assert np.flatnonzero(initial.rows).tolist() == [3] and coverage.words_found == 1
    np.testing.assert_array_equal(initial.vectors[3], [1, 2, 3])


def test_matched_rows_take_the_vectors_and_the_others_keep_the_random_init(tmp_path):
    from jax.sharding import Mesh

    from lstm_jax.sentiment.model import model_kwargs
    from lstm_jax.sentiment.train import create_train_state

    config = load_config(embedding_dim=DIM)
    kwargs = model_kwargs(config, VOCABULARY.size)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    initial, _ = read_word_vectors(write(tmp_path / "v.txt", LINES), VOCABULARY, DIM, TRAIN)
    plain = np.asarray(create_train_state(config, kwargs, 1, mesh).params["embed"]["embedding"][...])
    loaded = np.asarray(create_train_state(config, kwargs, 1, mesh, initial).params["embed"]["embedding"][...])
    for index in range(VOCABULARY.size):
        np.testing.assert_array_equal(loaded[index], initial.vectors[index] if index in EXPECTED else plain[index])


def test_the_job_with_vectors_and_every_new_cell_option(tmp_path, review_files):
    """One smoke run through train.py and predict.py: layer-normalised LSTMP cells with recurrent dropout and
    zoneout, embeddings initialised from a vector file."""
    vectors = write(tmp_path / "vectors.vec.gz", [f"{w} " + " ".join(["0.5"] * 8) for w in ("movie", "great", "dull")],
                    header="3 8", compress=True)  # fmt: skip
    workdir = tmp_path / "run"
    options = ["--config.cell=layernorm_lstm", "--config.proj_size=4", "--config.recurrent_dropout_rate=0.2",
               "--config.zoneout_rate=0.1", "--config.embedding_init=file", f"--config.embedding_path={vectors}",
               "--config.num_epochs=2"]  # fmt: skip
    result = run_tool(*smoke_args(review_files, workdir, *options))
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert f"word vectors from {vectors}: 3 of " in out and "Accuracy:" in out
    source, output = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("a great movie\n")
    assert predict(workdir, source, output).returncode == 0
    assert output.read_text().startswith("Statement: a great movie\nPredicted Sentiment: ")


@pytest.mark.parametrize("cell", ["slstm", "mlstm"])
def test_the_job_trains_and_predicts_with_xlstm_cells(tmp_path, review_files, cell):
    workdir = tmp_path / "run"
    options = [f"--config.cell={cell}", "--config.num_heads=2", "--config.num_epochs=2", "--config.bidirectional=true"]
    result = run_tool(*smoke_args(review_files, workdir, *options))
    assert result.returncode == 0, result.stderr.decode()
    assert "Accuracy:" in result.stdout.decode()
    source, output = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("a great movie\n\nboring\n")
    assert predict(workdir, source, output).returncode == 0
    assert output.read_text().count("Predicted Sentiment: ") == 2


@pytest.mark.parametrize(
    "overrides, message",
    [  # the model's rules come from the library (the job passes its message on)
        (dict(cell="slstm", num_heads=3), "hidden_features=8 must divide into num_heads=3"),
        (dict(cell="slstm", zoneout_rate=0.1), "zoneout needs a cell with output\\(carry\\); SLSTMCell has none"),
        (dict(cell="mlstm", recurrent_dropout_rate=0.1), "needs a recurrent matmul"),
        (dict(backend="parallel"), "backend='parallel' needs a cell with a parallel form"),
        (dict(embedding_init="file"), "--config.embedding_init=file and --config.embedding_path=FILE go together"),
        (dict(proj_size=8), "proj_size=8, .*proj_size must be between 1 and hidden_features - 1 = 7"),
        (dict(cell="gru", proj_size=2), "cell 'gru' does not take these arguments .*proj_size"),
        (dict(zoneout_rate=1.0), "--config.zoneout_rate=1.0 must be in \\[0, 1\\)"),
        (dict(backend="fused", zoneout_rate=0.1), "backend='fused' cannot apply zoneout"),
    ],
)
def test_bad_new_options_are_refused_with_the_rule(overrides, message):
    with pytest.raises(UserError, match=message) as error:
        validate(load_config("smoke", **overrides))
    assert "\n" not in str(error.value)


def test_bad_options_stop_the_command_before_anything_is_written(tmp_path, review_files):
    for flags, message in ((["--config.cell=slstm", "--config.num_heads=3"], "must divide into num_heads=3"),
                           (["--config.embedding_init=file", "--config.embedding_path=/nonexistent.txt"],
                            "cannot read word vectors")):  # fmt: skip
        workdir = tmp_path / "run"
        one_line_error(run_tool(*smoke_args(review_files, workdir, *flags)), message)
        assert not (workdir / "checkpoints").exists()
