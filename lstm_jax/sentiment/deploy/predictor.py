"""The one prediction path: :func:`load` gives a :class:`Predictor` for a checkpoint or an exported folder.

``predict.py``, ``serve.py`` (through :func:`~lstm_jax.sentiment.serve.app.load_service`) and
``lstm_jax.deploy.load`` all call :func:`load`; :func:`check_choice` holds the rules on ``--workdir`` /
``--model`` and the flags that go with each; settings are checked against the config's one table
(:data:`~lstm_jax.sentiment.config.PREDICTION_RANGES`). Runners (:mod:`.runners`): a checkpoint's model
(:mod:`.predict`, Flax), a StableHLO artifact or an ONNX graph (:mod:`.artifacts`, no Flax).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lstm_jax.sentiment import batching
from lstm_jax.sentiment.config import check_prediction_setting
from lstm_jax.sentiment.deploy import artifacts
from lstm_jax.sentiment.deploy.runners import Runner
from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.tokenizer import Vocabulary


class Predictor:
    """``predict(texts) -> <float32>[n]`` probabilities of positive, for any runner.

    Texts are encoded a chunk at a time and batched like evaluation data (:mod:`.batching`): sorted by length,
    each batch padded to its longest text rounded up to ``length_bucket``, so only a few shapes ever compile;
    results come back in input order. ``threshold`` is the probability at or above which a statement is
    positive; ``description`` what ``GET /model`` shows (the manifest, or the same summary of a checkpoint).
    """

    def __init__(self, runner: Runner, vocabulary: Vocabulary, max_len: int, length_bucket: int, threshold: float,
                 description: dict, batch_size: int = 256):  # fmt: skip
        check_prediction_setting("batch_size", batch_size, "batch size")
        check_prediction_setting("threshold", threshold)
        self.runner, self.format, self.description = runner, runner.format, description
        self.vocabulary, self.max_len, self.length_bucket = vocabulary, max_len, length_bucket
        self.threshold = threshold
        self.batch_multiple = runner.batch_multiple
        self.batch_size = -(-batch_size // self.batch_multiple) * self.batch_multiple
        self.chunk_size = 8 * self.batch_size  # texts read per predict() call: room to sort them by length

    @property
    def model(self):
        """The checkpoint's NNX model (None for an exported folder)."""
        return self.runner.model() if self.runner.model else None

    @property
    def manifest(self) -> dict:
        return self.description

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str | bytes):
            raise TypeError("predict() takes a list of statements, not one string: write predict([text])")
        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"predict() takes strings; statement {index} is {type(text).__name__}")
        if not texts:
            return np.zeros(0, np.float32)
        tokens, lengths = self.vocabulary.encode(texts, self.max_len)
        batch_size = self.batch_size
        if self.runner.fills_batches:  # never filled beyond the input's rows
            batch_size = min(batch_size, -(-len(texts) // self.batch_multiple) * self.batch_multiple)
        return batching.run_in_batches(self.run_batch, tokens, lengths, batch_size, self.length_bucket, self.max_len,
                                       fill=self.runner.fills_batches)  # fmt: skip

    def run_batch(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Probabilities of one encoded batch (``b`` a multiple of :attr:`batch_multiple`), refused if any is not
        finite (NaN would otherwise label a statement negative)."""
        probabilities = self.runner.run_batch(tokens, lengths)
        if not np.isfinite(probabilities).all():
            raise UserError(f"the {self.format} model gave non-finite probabilities; export or choose another "
                            "checkpoint")  # fmt: skip
        return probabilities


def check_choice(workdir: str | None, model: str | None, step: int | None = None,
                 model_format: str | None = None) -> None:  # fmt: skip
    """The rules on choosing a checkpoint (``--workdir``, ``--step``) or an exported folder (``--model``,
    ``--format``), for every entry point."""
    if not (workdir or model):
        raise UserError("--workdir (a checkpoint) or --model (an exported folder) is required, e.g. --workdir "
                        "checkpoints/default")  # fmt: skip
    if workdir and model:
        raise UserError("give --workdir (a checkpoint) or --model (an exported folder), not both")
    if model and step is not None:
        raise UserError("--step chooses a checkpoint; an exported --model holds one model already")
    if workdir and model_format:
        raise UserError("--format chooses among an exported model's formats; a --workdir has one")
    if model_format is not None and model_format not in artifacts.FILES:
        raise UserError(f"format {model_format!r} is not one of {', '.join(artifacts.FILES)}")


def load(workdir: str | Path | None = None, model: str | Path | None = None, model_format: str | None = None,
         step: int | None = None, batch_size: int = 256, threshold: float | None = None,
         before_jax: Callable[[], None] = lambda: None) -> Predictor:  # fmt: skip
    """The predictor of a checkpoint (``workdir``, best step unless ``step``) or of an exported folder (``model``,
    ``model_format`` default the fastest one installed). ``threshold`` default: 0.5, or the exported one.
    ``before_jax`` runs just before JAX is first needed (a checkpoint or StableHLO; never for ONNX)."""
    check_choice(workdir and str(workdir), model and str(model), step, model_format)
    check_prediction_setting("batch_size", batch_size, "batch size")
    if threshold is not None:
        check_prediction_setting("threshold", threshold)
    if model:
        return _load_exported(Path(model), model_format, batch_size, threshold, before_jax)
    before_jax()
    from lstm_jax.sentiment.deploy.export import describe  # the manifest's writer: Flax, only here
    from lstm_jax.sentiment.deploy.predict import checkpoint_runner, restore_model

    restored = restore_model(workdir, step)
    threshold = 0.5 if threshold is None else threshold
    description = {**describe(restored, threshold), "format": "checkpoint"}
    return Predictor(checkpoint_runner(restored.model), restored.vocabulary, restored.max_len, restored.length_bucket,
                     threshold, description, batch_size)  # fmt: skip


def _load_exported(folder: Path, model_format: str | None, batch_size: int, threshold: float | None,
                   before_jax: Callable[[], None]) -> Predictor:  # fmt: skip
    manifest = artifacts.read_manifest(folder)
    model_format = artifacts.choose_format(folder, manifest, model_format)
    vocabulary = artifacts.read_vocabulary(folder, manifest)
    if model_format == "stablehlo":
        before_jax()
    runner = artifacts.RUNNERS[model_format](folder, manifest)
    threshold = manifest["threshold"] if threshold is None else threshold
    description = {**manifest, "format": model_format, "threshold": threshold}
    tokenizer = manifest["tokenizer"]
    return Predictor(runner, vocabulary, tokenizer["max_len"], tokenizer["length_bucket"], threshold, description,
                     batch_size)  # fmt: skip
