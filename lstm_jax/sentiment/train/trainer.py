"""Training and evaluation of the sentiment classifier (library; the command line is ../../train.py).

The whole run is one pytree, :class:`TrainState` (parameters, fixed tables, optimizer state, moving average,
step, the epoch's position and metric sums, dropout key), taken and returned by the module-level jitted
:func:`train_step` (which donates it) and read by :func:`eval_step`. The encoded data sit on the devices
from the start; each step gathers its batch there from an index plan (:mod:`.batching`), so the host
sends nothing per step. ``train_and_evaluate`` reads like Flax's sst2 example: create the state (or
restore it), then ``train_epoch`` / ``evaluate`` / checkpoint until done, then test.

Data parallelism: every device holds the data and the parameters (replicated); the batch indices are
sharded over a ``Mesh`` of all devices (axis ``data``), so each device gathers and runs its share of the
batch and XLA inserts the gradient all-reduce. One device is the same code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import signal
import sys
import threading
from pathlib import Path
from time import perf_counter

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from lstm_jax.sentiment import batching, files
from lstm_jax.sentiment import checkpoints as ckpt
from lstm_jax.sentiment.config import check_resumable, validate
from lstm_jax.sentiment.data import datasets as data_lib
from lstm_jax.sentiment.data import vectors as vectors_lib
from lstm_jax.sentiment.data.subwords import compact_buckets, subword_ids
from lstm_jax.sentiment.data.vectors import InitialVectors
from lstm_jax.sentiment.errors import UserError
from lstm_jax.sentiment.model.classifier import DataSizes, build_model, check_model
from lstm_jax.sentiment.model.ngrams import NgramFit, fit_ngram_scorer
from lstm_jax.sentiment.process.cli import enable_compilation_cache
from lstm_jax.sentiment.tokenizer import PAD_ID, UNKNOWN_ID, Vocabulary
from lstm_jax.sentiment.train import distributed
from lstm_jax.sentiment.train.reporting import RunReport

SUMS = ("loss", "correct", "count", "nonfinite")  # what a step adds up; divided by count when reported
EVAL_BATCH_SIZE = 256  # examples per evaluation step (rounded up to a multiple of the device count)
POOLED_LENGTH_BUCKET = 8  # length-pooled training batches hold similar lengths, so they pad to a finer multiple


class NonFiniteLoss(UserError):
    pass


@struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree (saved and restored by name)."""

    step: jax.Array  # <int32>[]: optimizer steps taken in the whole run
    epoch: jax.Array  # <int32>[]: finished epochs
    batch: jax.Array  # <int32>[]: batches already taken in the current epoch
    params: nnx.State  # the model's nnx.Param weights: the only ones differentiated, updated and averaged
    tables: nnx.State  # everything else of the model: its fixed tables (embedding channels, ids, n-gram scorer)
    opt_state: optax.OptState
    ema: nnx.State | None  # moving average of the parameters (ema_decay > 0), else None
    sums: dict[str, jax.Array]  # the current epoch's running sums, keys SUMS
    dropout_key: jax.Array  # <uint32>[2]; step s draws its dropout from fold_in(dropout_key, s)
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    def model(self, weights: nnx.State | None = None) -> nnx.Module:
        """The model with ``weights`` (default: the parameters) and the fixed tables."""
        return nnx.merge(self.graphdef, self.params if weights is None else weights, self.tables)

    def inference_weights(self) -> nnx.State:
        """The weights evaluated and used for prediction: the moving average when there is one."""
        return self.ema if self.ema is not None else self.params


def make_optimizer(config) -> optax.GradientTransformation:
    """Adam with the config's step size (over the parameters alone: the fixed tables are not in its tree)."""
    return optax.adam(config.learning_rate)


def zero_sums() -> dict[str, jax.Array]:
    return {name: jnp.zeros((), jnp.float32) for name in SUMS}


def create_train_state(config, sizes: DataSizes, mesh: Mesh, initial_vectors: InitialVectors | None = None,
                       ngram_fit: NgramFit | None = None, subwords: np.ndarray | None = None,
                       trained_ids: np.ndarray | None = None) -> TrainState:  # fmt: skip
    """A fresh state, built in one jitted call (eager initialisation costs hundreds of small dispatches).

    The model fills its own tables (:meth:`.Embedder.fill`): ``initial_vectors`` replace rows of the embedding
    table, and the static channel starts as a copy of the result; ``ngram_fit`` fills the n-gram scorer;
    ``subwords <int32>[vocab, SLOTS]`` (:func:`.subwords.subword_ids`) the words' n-gram rows; ``trained_ids
    <int32>[R]`` (R = ``sizes.trained_rows``) the ids whose rows training moves, copied into ``embed_rows``.
    """
    tx = make_optimizer(config)

    def init(initial_vectors, ngram_fit, subwords, trained_ids):
        model = build_model(config, sizes, nnx.Rngs(params=config.seed))
        if ngram_fit is not None:
            model.ngrams.fill(*ngram_fit)
        vectors, rows = (initial_vectors.vectors, initial_vectors.rows) if initial_vectors is not None else (None, None)
        model.embedder.fill(vectors, rows, subwords, trained_ids)
        graphdef, params, tables = nnx.split(model, nnx.Param, ...)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            epoch=jnp.zeros((), jnp.int32),
            batch=jnp.zeros((), jnp.int32),
            params=params,
            tables=tables,
            opt_state=tx.init(params),
            ema=params if config.ema_decay > 0 else None,
            sums=zero_sums(),
            dropout_key=jax.random.PRNGKey(config.seed),
            graphdef=graphdef,  # static: it leaves the jitted call as part of the pytree's structure
            tx=tx,
            ema_decay=config.ema_decay,
        )

    fitted = None if ngram_fit is None else (ngram_fit.table, np.float32(ngram_fit.bias))
    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))(initial_vectors, fitted, subwords, trained_ids)


def batch_sums(logits, labels, weights) -> dict[str, jax.Array]:
    """Sums over a batch of ``logits <float32>[batch]``: cross-entropy, correct answers, real examples."""
    losses = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))
    correct = ((logits > 0) == (labels == 1)).astype(jnp.float32)
    return {"loss": jnp.sum(losses * weights), "correct": jnp.sum(correct * weights), "count": jnp.sum(weights)}


@jax.jit
def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


@functools.partial(jax.jit, static_argnames="time", donate_argnames="state")
def train_step(state: TrainState, examples: dict, order: jax.Array, time: int) -> TrainState:
    """One optimizer step on batch ``state.batch`` of the epoch's ``order <int32>[batches, batch_size]``."""
    batch = batching.take_batch(examples, order[state.batch], time)
    dropout_key = jax.random.fold_in(state.dropout_key, state.step)

    def loss_fn(params):
        dropout = nnx.Rngs(dropout=dropout_key)  # made inside: NNX RNG counters belong to the trace using them
        logits = state.model(params)(batch["tokens"], batch["lengths"], rngs=dropout)
        sums = batch_sums(logits, batch["labels"], batch["weights"])
        return sums["loss"] / jnp.maximum(sums["count"], 1.0), sums

    grads, sums = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Counted every step: a non-finite loss. Non-finite parameters (a diverged update can leave a finite loss
    # this step) are checked before each save by checked_sums: a pass over every weight costs 7% of a step.
    sums["nonfinite"] = 1.0 - jnp.isfinite(sums["loss"]).astype(jnp.float32)
    ema = state.ema
    if ema is not None:
        ema = jax.tree.map(lambda e, p: state.ema_decay * e + (1.0 - state.ema_decay) * p, ema, params)
    return state.replace(
        step=state.step + 1,
        batch=state.batch + 1,
        params=params,
        opt_state=opt_state,
        ema=ema,
        sums=jax.tree.map(jnp.add, state.sums, sums),
    )


@functools.partial(jax.jit, static_argnames="time")
def eval_step(state: TrainState, sums: dict, examples: dict, indices: jax.Array, time: int) -> dict:
    """Adds one evaluation batch (``indices <int32>[batch_size]``) to ``sums``."""
    batch = batching.take_batch(examples, indices, time)
    logits = state.model(state.inference_weights())(batch["tokens"], batch["lengths"])
    return jax.tree.map(jnp.add, sums, {**batch_sums(logits, batch["labels"], batch["weights"]), "nonfinite": 0.0})


@functools.partial(jax.jit, donate_argnames="state")
def next_epoch(state: TrainState) -> TrainState:
    return state.replace(epoch=state.epoch + 1, batch=jnp.zeros((), jnp.int32), sums=zero_sums())


@dataclasses.dataclass
class DeviceSplit:
    """One encoded split on the devices, with what the host needs to plan its batches."""

    examples: dict  # tokens <int32>[rows, max_len], lengths, labels: replicated on every device
    tokens: np.ndarray  # host copies of this split's rows: tokens for the PPMI embeddings, lengths for planning
    lengths: np.ndarray
    first_row: int = 0  # where this split starts in ``examples`` (splits may share one array)

    def __len__(self) -> int:
        return len(self.lengths)


def put(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array every process holds in full (works for one or many processes)."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def device_splits(vocabulary: Vocabulary, splits: list, max_len: int, mesh: Mesh) -> list[DeviceSplit]:
    """The splits encoded into one set of arrays on the devices: evaluation steps see one shape for all of
    them, so each padded length compiles once for validation and test together."""
    encoded = [vocabulary.encode(split.texts, max_len) for split in splits]
    arrays = {
        "tokens": np.concatenate([tokens for tokens, _ in encoded]),
        "lengths": np.concatenate([lengths for _, lengths in encoded]),
        "labels": np.concatenate([np.asarray(split.labels, np.int32) for split in splits]),
    }
    examples = {name: put(array, NamedSharding(mesh, P())) for name, array in arrays.items()}
    starts = np.cumsum([0] + [len(split) for split in splits])
    return [DeviceSplit(examples, tokens, lengths, int(start)) for (tokens, lengths), start in zip(encoded, starts)]


class Evaluator:
    """Evaluates a split; its batches (sorted by length) are planned and sent to the devices once."""

    def __init__(self, split: DeviceSplit, config, mesh: Mesh):
        batch_size = -(-EVAL_BATCH_SIZE // mesh.size) * mesh.size
        plan = batching.plan_batches(split.lengths, batch_size, config.length_bucket, config.max_len)
        indices = np.where(plan.indices >= 0, plan.indices + split.first_row, -1).astype(np.int32)
        sharding = NamedSharding(mesh, P("data"))
        self.split, self.batches = split, [(put(row, sharding), time) for row, time in zip(indices, plan.time)]
        # Placed like eval_step's outputs, so the first batch does not compile a variant of its own.
        self.zeros = jax.device_put(zero_sums(), NamedSharding(mesh, P()))

    def __call__(self, state: TrainState) -> dict:
        sums = self.zeros
        for indices, time in self.batches:
            sums = eval_step(state, sums, self.split.examples, indices, time)
        sums = jax.device_get(sums)
        count = max(float(sums["count"]), 1.0)
        return {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count}


def epoch_plan(config, epoch: int, lengths: np.ndarray) -> batching.BatchPlan:
    """Epoch ``epoch``'s training batches: a function of (seed, epoch) alone, so a resumed run and every process
    of a multi-process run make the same ones. Length-pooled batches pad to :data:`POOLED_LENGTH_BUCKET`, the plain
    shuffle's to ``length_bucket`` (as evaluation)."""
    order = np.random.default_rng([config.seed, epoch]).permutation(len(lengths))
    length_bucket = POOLED_LENGTH_BUCKET if config.length_pool > 1 else config.length_bucket
    return batching.plan_training_batches(lengths, config.batch_size, length_bucket, config.max_len, order,
                                          config.length_pool, np.random.default_rng([config.seed, epoch, 1]))


def checked_sums(state: TrainState) -> dict[str, float]:
    """Fetches the epoch's sums; a non-finite loss (at any step so far) or parameter stops training before
    anything bad is saved. Called before every save."""
    sums = {name: float(value) for name, value in jax.device_get(state.sums).items()}
    if sums["nonfinite"] or not math.isfinite(sums["loss"]) or not all_finite(state.params):
        raise NonFiniteLoss(
            f"the training loss or parameters became non-finite by step {int(state.step)}; "
            "the last good checkpoint is kept. Lower --config.learning_rate"
        )
    return sums


def train_epoch(state: TrainState, split: DeviceSplit, config, mesh: Mesh, save, stop, show: bool) -> TrainState:
    """Runs the rest of the current epoch (from ``state.batch``), calling ``save(state)`` every
    ``checkpoint_every_steps`` steps; returns early, mid-epoch, when ``stop.requested``."""
    epoch, first, step = int(state.epoch), int(state.batch), int(state.step)
    plan = epoch_plan(config, epoch, split.lengths)
    indices = put(plan.indices, NamedSharding(mesh, P(None, "data")))
    bar = tqdm(range(first, len(plan)), desc=f"epoch {epoch + 1}/{config.num_epochs}", initial=first,
               total=len(plan), disable=None if show else True, leave=False)  # fmt: skip
    for index in bar:
        if stop.requested:
            break
        state = train_step(state, split.examples, indices, plan.time[index])
        step += 1
        if step % config.checkpoint_every_steps == 0 and index + 1 < len(plan):
            checked_sums(state)
            save(state)
    bar.close()
    return state


def finished_early(history: list[dict], patience: int) -> bool:
    if not patience or len(history) <= patience:
        return False
    best_epoch = max(range(len(history)), key=lambda i: history[i]["val_accuracy"])
    return len(history) - 1 - best_epoch >= patience


@dataclasses.dataclass
class Job:
    """What a run needs beside its train state: settings, data, vocabulary, checkpoints, logs."""

    config: object
    mesh: Mesh
    run: ckpt.Checkpoints | None  # created once the data and state are ready
    report: RunReport
    vocabulary: Vocabulary
    sizes: DataSizes
    train: DeviceSplit
    validate: Evaluator | None  # None without a validation split (validation_fraction=0)
    test: Evaluator
    log: object  # print on the main process, a no-op on the others

    def save(self, state: TrainState, val_accuracy: float | None = None) -> None:
        config = self.config
        self.run.save(int(state.step), state, ckpt.run_meta(config.to_dict(), self.vocabulary.to_json(),
                                                            self.sizes, self.report.history), val_accuracy)  # fmt: skip

    def finished_early(self) -> bool:
        return finished_early(self.report.history, self.config.early_stopping_patience)


def train_and_evaluate(config, workdir: str | Path) -> dict:
    """Trains (or resumes) the run in ``workdir``, evaluates the test split once, returns the final metrics."""
    files.local_path(str(workdir), "--workdir")
    check_settings(config)
    enable_compilation_cache(config.compilation_cache_dir)
    distributed.maybe_initialize(config)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    if config.batch_size % mesh.size:
        raise UserError(f"batch_size {config.batch_size} does not divide by the {mesh.size} devices; "
                        f"use a multiple of {mesh.size} (--config.batch_size)")  # fmt: skip
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"workdir {workdir} is not a folder; choose another --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UserError(f"cannot write in workdir {workdir}; check its permissions or choose another --workdir")
    # One writer per work directory (in a multi-process run, the main process holds the lock for all).
    with files.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
        job, state = prepare(config, workdir, mesh)
        # Orbax's writer starts only now, after everything that can fail on bad data or settings: a manager
        # created and dropped at once can leave a background thread that prints a traceback at exit.
        job.run = ckpt.Checkpoints(workdir, keep=config.keep_checkpoints)
        try:  # whatever happens, finish the saves in flight (a half-written one would be lost)
            if job.run.latest_step() is not None:
                state = resume(job, state)
            state = train(job, state)
            return test_and_finish(job, state)
        finally:
            job.run.close()


def check_settings(config) -> None:
    """Every rule on the settings, before any data is read: the config's own ranges, whether the model's parts
    fit together and whether the chosen vectors are there (one line each)."""
    validate(config)
    check_model(config)
    if config.embedding_init == "glove":
        vectors_lib.glove_folder(config.embedding_path)


def prepare(config, workdir: Path, mesh: Mesh) -> tuple[Job, TrainState]:
    """Data on the devices and a fresh train state; the vocabulary and history of the run in ``workdir``
    when there is one (its checkpoints are only read here)."""
    is_main = jax.process_index() == 0
    log = print if is_main else (lambda *args, **kwargs: None)
    meta = ckpt.Checkpoints(workdir, read_only=True).newest_meta()
    if meta is not None:
        check_resumable(config, meta["config"], workdir)
    splits = data_lib.load_splits(config)
    if meta is not None:
        vocabulary = Vocabulary.from_json(meta["vocabulary"], config.tokenizer)  # the same: check_resumable
    else:
        vocabulary = Vocabulary.fit(splits.train.texts, config.vocab_size, config.tokenizer)
        if config.vectors_vocab:
            extra = vectors_lib.vector_words(config, config.vectors_vocab, set(vocabulary.words))
            vocabulary = Vocabulary(vocabulary.words + extra, config.tokenizer)
            log(f"vocabulary: {len(extra):,} words added from the pretrained vectors (--config.vectors_vocab)")
    [train] = device_splits(vocabulary, [splits.train], config.max_len, mesh)
    validation, test = device_splits(vocabulary, [splits.validation, splits.test], config.max_len, mesh)
    log(f"data {config.dataset}: train {len(train)}, validation {len(validation)}, test {len(test)}; "
        f"vocabulary {vocabulary.size} ids; {mesh.size} device(s)")  # fmt: skip
    if meta is None:
        tables = (initial_vectors_for(config, vocabulary, train, log),
                  fit_ngrams(config, splits, train, validation, log))  # fmt: skip
        sizes, subwords, trained_ids = data_sizes(config, vocabulary, train)
        state = create_train_state(config, sizes, mesh, *tables, subwords, trained_ids)
    else:  # a resumed run restores its tables; their sizes come with its metadata
        sizes = DataSizes(**meta["sizes"])
        state = create_train_state(config, sizes, mesh)
    title = (f"{config.cell}{' bidirectional' if config.bidirectional else ''} E{config.embedding_dim} "
             f"H{config.hidden_size}, {config.pooling} pooling, on {config.dataset} ({Path(workdir).name})")
    report = RunReport(workdir, meta["history"] if meta else [], enabled=is_main, tensorboard=config.tensorboard,
                       title=title, tested=config.test_checkpoint, planned_epochs=config.num_epochs)  # fmt: skip
    job = Job(config, mesh, None, report, vocabulary, sizes, train,
              Evaluator(validation, config, mesh) if len(validation) else None, Evaluator(test, config, mesh), log)
    return job, state


def initial_vectors_for(config, vocabulary: Vocabulary, train: DeviceSplit, log) -> InitialVectors | None:
    """The embedding table's starting vectors by ``embedding_init`` (None: random)."""
    if config.embedding_init == "ppmi_svd":
        return InitialVectors(vectors_lib.ppmi_svd_embeddings(train.tokens, vocabulary.size, config.embedding_dim,
                                                              seed=config.seed))  # fmt: skip
    if config.embedding_init == "random":
        return None
    initial_vectors, coverage, which = vectors_lib.read_vectors(config, vocabulary, train.tokens)
    log(f"{which}: {coverage}")
    return initial_vectors


def data_sizes(config, vocabulary: Vocabulary, train: DeviceSplit):
    """(:class:`DataSizes`, subword rows <int32>[vocab, SLOTS] or None, trained ids <int32>[R] or None) of a new
    run. Only what training reaches is trained: the subword buckets of the training texts' words, and with
    ``vectors_vocab`` (words only the vectors know) the rows of padding, unknown and the training texts' ids."""
    ids_in_training = np.unique(np.asarray(train.tokens))  # padding included
    subwords, subword_rows, trained_ids = None, 0, None
    if config.subword_buckets:
        subwords, subword_rows = compact_buckets(subword_ids(vocabulary.words, config.subword_buckets), ids_in_training)
    if config.vectors_vocab:
        trained_ids = np.union1d(ids_in_training, [PAD_ID, UNKNOWN_ID]).astype(np.int32)
    sizes = DataSizes(vocabulary.size, subword_rows, 0 if trained_ids is None else len(trained_ids))
    return sizes, subwords, trained_ids


def fit_ngrams(config, splits, train: DeviceSplit, validation: DeviceSplit, log) -> NgramFit | None:
    """The n-gram scorer fitted on the training split (None without one)."""
    if not config.ngram_buckets:
        return None
    log2_buckets = config.ngram_buckets.bit_length() - 1
    fit = fit_ngram_scorer((train.tokens, train.lengths, splits.train.labels),
                           (validation.tokens, validation.lengths, splits.validation.labels), log2_buckets,
                           order=config.ngram_order)  # fmt: skip
    log(fit.describe())
    return fit


def resume(job: Job, state: TrainState) -> TrainState:
    """The state of the newest intact checkpoint (a damaged newer one is reported and skipped)."""
    step, state, meta = job.run.restore_newest(state)
    job.report.history[:] = meta["history"]
    job.log(f"resumed from step {step} (epoch {int(state.epoch) + 1}, batch {int(state.batch)})")
    return state


def train(job: Job, state: TrainState) -> TrainState:
    """Epochs until ``num_epochs`` or early stopping; Ctrl-C saves the state and raises KeyboardInterrupt."""
    config, stop = job.config, StopRequest()
    try:
        while int(state.epoch) < config.num_epochs and not job.finished_early() and not stop.requested:
            start = perf_counter()
            state = train_epoch(state, job.train, config, job.mesh, job.save, stop, show=job.report.enabled)
            if not stop.requested:
                state = end_epoch(job, state, perf_counter() - start)
    finally:
        stop.release()
    if stop.requested:
        checked_sums(state)
        job.save(state)
        job.run.wait()
        job.report.finish()
        print(f"interrupted: saved step {int(state.step)} in {job.run.workdir}; rerun the same command to resume",
              file=sys.stderr)  # fmt: skip
        raise KeyboardInterrupt
    if job.finished_early():
        job.log(f"early stopping: no better validation accuracy for {config.early_stopping_patience} epochs")
    job.report.start_curves()
    return state


def end_epoch(job: Job, state: TrainState, seconds: float) -> TrainState:
    """Validation, the epoch's log line and history entry, and the epoch-end checkpoint (also ``best`` if better).
    Without a validation split the entry has no ``val_`` keys and nothing is ``best``: the last weights count."""
    sums = checked_sums(state)
    val = job.validate(state) if job.validate is not None else None
    state = next_epoch(state)
    count = max(sums["count"], 1.0)
    entry = {"epoch": int(state.epoch), "step": int(state.step), "train_loss": sums["loss"] / count,
             "train_accuracy": sums["correct"] / count}  # fmt: skip
    if val is not None:
        entry.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
    entry["epoch_seconds"] = seconds
    earlier = list(job.report.history)
    job.report.add_epoch(entry)
    # The first best epoch stays the best (as early stopping counts from it).
    improved = val is not None and all(val["accuracy"] > h["val_accuracy"] for h in earlier)
    job.save(state, val_accuracy=val["accuracy"] if improved else None)
    validation = f"val loss {val['loss']:.4f}  val acc {100 * val['accuracy']:.2f}%  " if val else ""
    job.log(f"epoch {entry['epoch']:3d}/{job.config.num_epochs}  train loss {entry['train_loss']:.4f}  "
            f"train acc {100 * entry['train_accuracy']:.2f}%  {validation}({entry['epoch_seconds']:.1f}s)")
    return state


def test_and_finish(job: Job, state: TrainState) -> dict:
    """Evaluates the test split once (on the best validation checkpoint, or the last), writes the final logs."""
    run = job.run
    test_step = int(state.step)
    if job.config.test_checkpoint == "best" and run.best.best_step() is not None:
        run.wait()  # the best may be the save still in flight
        test_step = run.best.best_step()
        state = run.restore(test_step, state, manager=run.best)
    test = job.test(state)
    final = {
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "test_checkpoint_step": test_step,
        "best_val_accuracy": max((h["val_accuracy"] for h in job.report.history if "val_accuracy" in h), default=None),
    }
    job.report.finish(final)
    job.log(f"Test loss {test['loss']:.4f} (checkpoint step {test_step})")
    job.log(f"Accuracy: {100 * test['accuracy']:.2f}%")
    return final


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM (a scheduler's notice before preemption) asks the loop to stop after the
    current step, save, and exit; a second signal interrupts at once.

    A flag rather than KeyboardInterrupt, because libraries on the path (checkpointing, plotting) may swallow
    the exception or be left half-way by it.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def release(self):
        for number, previous in self._previous.items():
            signal.signal(number, previous)
