"""Statements in, predictions out, for any predictor (a checkpoint's or an exported model's).

``predict_file`` streams a text file (one statement per line) through ``predictor.predict`` in chunks of
``predictor.chunk_size`` and writes the predictions to a temporary file that is renamed into place only when
complete. This module imports no Flax and no orbax, so an exported model predicts without them.

Input rules (see :mod:`.files`): a byte-order mark selects UTF-8, UTF-16 or UTF-32, else UTF-8; surrounding
whitespace is stripped; empty lines are skipped and counted; undecodable bytes are replaced with U+FFFD and
the lines counted in a warning (the rest of the line is still predicted); a line longer than ``max_len``
tokens is truncated like training data (and one over 1 MiB is cut there while reading).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from lstm_jax.sentiment import files
from lstm_jax.sentiment.config import check_prediction_setting
from lstm_jax.sentiment.errors import UserError, raise_if_interrupted

FORMATS = ("txt", "jsonl", "csv")


class _InputStats:
    def __init__(self):
        self.statements = self.empty = self.invalid_utf8 = 0


def _statements(stream, stats: _InputStats, progress) -> Iterator[str]:
    for line, size, replaced in files.read_lines(stream):
        progress.update(size)
        stats.invalid_utf8 += replaced
        line = line.strip()
        if not line:
            stats.empty += 1
            continue
        stats.statements += 1
        yield line


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # all but tab and newline


def printable(text: str) -> str:
    """``text`` with control characters written as escapes (``\\r``, ``\\x1b``): a statement can then neither
    forge a ``Predicted Sentiment:`` line with a carriage return nor recolour a terminal."""
    return _CONTROLS.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def _writer(handle, output_format: str):
    """Returns write(statement, probability, positive) for one output format."""
    if output_format == "txt":

        def write(text, probability, positive):
            sentiment = "positive" if positive else "negative"
            handle.write(f"Statement: {printable(text)}\nPredicted Sentiment: {sentiment}\n-----\n")

    elif output_format == "jsonl":

        def write(text, probability, positive):
            record = {
                "statement": text,
                "sentiment": "positive" if positive else "negative",
                "probability_positive": round(float(probability), 6),
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    else:
        table = csv.writer(handle)
        table.writerow(["statement", "sentiment", "probability_positive"])

        def write(text, probability, positive):
            table.writerow([printable(text), "positive" if positive else "negative", f"{float(probability):.6f}"])

    return write


class SupportsPredict(Protocol):
    """What :func:`predict_file` needs: probabilities for a list of texts, and how many to pass at once."""

    chunk_size: int

    def predict(self, texts: Sequence[str]) -> np.ndarray: ...


def predict_file(
    predictor: SupportsPredict, input_path: str, output: str | Path, output_format: str = "txt", threshold: float = 0.5
) -> dict:
    """Streams ``input_path`` (``-`` = stdin) to ``output`` (``-`` = stdout); returns counts.

    The output is written as :class:`~lstm_jax.sentiment.files.SafeOutput` does: never over the input, never
    half-written, devices and links written through."""
    if output_format not in FORMATS:
        raise UserError(f"unknown format {output_format!r}; use one of {', '.join(FORMATS)}")
    check_prediction_setting("threshold", threshold)
    destination = files.SafeOutput(output, inputs=(input_path,))
    if input_path == "-":
        stream, size = sys.stdin.buffer, None
    else:
        path = Path(input_path)
        if not path.is_file():
            raise UserError(f"input {path} does not exist or is not a file; give a text file, one statement per line")
        try:
            stream, size = open(path, "rb"), path.stat().st_size
        except OSError as error:
            raise UserError(f"cannot read input {path} ({error.strerror}); check its permissions") from None
    stats = _InputStats()
    # A bar only for inputs over 1 MiB, and (disable=None) only when stderr is a terminal.
    progress = tqdm(total=size, unit="B", unit_scale=True, desc="predicting",
                    disable=True if not size or size < 2**20 else None)  # fmt: skip
    try:
        with stream, destination as handle:
            write = _writer(handle, output_format)
            for batch in _batches(_statements(stream, stats, progress), predictor.chunk_size):
                raise_if_interrupted()
                for text, probability in zip(batch, predictor.predict(batch)):
                    write(text, probability, probability >= threshold)
            if stats.statements == 0:
                raise UserError(
                    f"input {input_path} has no statements ({stats.empty} empty lines); put one statement per line"
                )
    finally:
        progress.close()
    return {"statements": stats.statements, "empty_lines": stats.empty, "invalid_utf8_lines": stats.invalid_utf8}
