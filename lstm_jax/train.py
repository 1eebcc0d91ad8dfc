"""Training and evaluation of the sentiment classifier (library; the command line is ../train.py).

``train_and_evaluate(config, workdir)`` loads the data, fits (or restores) the vocabulary, trains with
optax Adam under ``jax.jit``, checkpoints with orbax, resumes from the latest checkpoint in ``workdir``,
evaluates the test split once at the end and returns the final metrics.

Data parallelism: the train and eval steps see each batch sharded over a ``Mesh`` of all devices
(batch axis ``data``) with parameters replicated; XLA inserts the gradient all-reduce. On one device the
code is the same. ``batch_size`` must divide by the device count (a clear error otherwise); the last,
short batch of an epoch is padded to full size with zero-weight examples. Each batch is trimmed to its
longest sequence rounded up to ``length_bucket`` tokens, so only max_len / length_bucket shapes ever
compile.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from lstm_jax import checkpoints as ckpt
from lstm_jax import data as data_lib
from lstm_jax.embeddings import ppmi_svd_embeddings
from lstm_jax.errors import UserError
from lstm_jax.models import build_model, model_kwargs
from lstm_jax.tokenizer import Vocabulary, trim_to_bucket


class NonFiniteLoss(UserError):
    pass


# Settings a resumed run may change: they steer the run, not what it computes.
RESUMABLE_CHANGES = frozenset(
    ["early_stopping_patience", "checkpoint_every_steps", "keep_checkpoints", "distributed", "eval_batch_size",
     "cache_dir", "data_path", "train_path", "val_path", "test_path"]
)  # fmt: skip


def create_model(kwargs: dict, seed: int):
    return build_model(kwargs, nnx.Rngs(params=seed))


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    if config.schedule == "constant":
        learning_rate = config.learning_rate
    elif config.schedule == "cosine":
        total = max(1, config.num_epochs * steps_per_epoch)
        learning_rate = optax.warmup_cosine_decay_schedule(
            0.0, config.learning_rate, int(config.warmup_epochs * steps_per_epoch), total
        )
    else:
        raise UserError(f"unknown schedule {config.schedule!r}; use constant or cosine")
    if config.weight_decay > 0:
        optimizer = optax.adamw(learning_rate, weight_decay=config.weight_decay)
    else:
        optimizer = optax.adam(learning_rate)
    if config.grad_clip_norm > 0:
        optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
    return optimizer


def _batch_metrics(member_logits, labels, weights):
    """Sums over the batch (divided by counts only when reported); ``member_logits <[members, batch]>``.

    The loss is each member's own cross-entropy, averaged; accuracy is that of the averaged logit.
    """
    losses = optax.sigmoid_binary_cross_entropy(member_logits, labels.astype(jnp.float32)).mean(axis=0)
    logits = member_logits.mean(axis=0)
    correct = ((logits > 0) == (labels == 1)).astype(jnp.float32)
    return {"loss": jnp.sum(losses * weights), "correct": jnp.sum(correct * weights), "count": jnp.sum(weights)}


def make_steps(model: nnx.Module, optimizer: nnx.Optimizer, seed: int, ema_decay: float = 0.0):
    """Returns jitted ``train_step`` and ``eval_step`` working on NNX states (split once here).

    ``train_step(params, opt_state, ema, batch, step) -> (params, opt_state, ema, metrics)``; ``ema`` is an
    exponential moving average of the parameters (``ema_decay`` per step), or None when not used.
    """
    model_def, _ = nnx.split(model)
    optimizer_def, _ = nnx.split(optimizer)
    dropout_root = jax.random.key(seed)

    def train_step(params, opt_state, ema, batch, step):
        model = nnx.merge(model_def, params)
        optimizer = nnx.merge(optimizer_def, opt_state)
        dropout_key = jax.random.fold_in(dropout_root, step)

        def loss_fn(model):
            logits = model.member_logits(batch["tokens"], batch["lengths"], rngs=nnx.Rngs(dropout=dropout_key))
            metrics = _batch_metrics(logits, batch["labels"], batch["weights"])
            return metrics["loss"] / jnp.maximum(metrics["count"], 1.0), metrics

        grads, metrics = nnx.grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        # A diverged update can leave a finite loss this step but NaN parameters: count both.
        finite = jnp.isfinite(metrics["loss"])
        for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
            finite &= jnp.all(jnp.isfinite(leaf))
        metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
        params = nnx.state(model)
        if ema is not None:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        return params, nnx.state(optimizer), ema, metrics

    def eval_step(params, batch):
        model = nnx.merge(model_def, params)
        logits = model.member_logits(batch["tokens"], batch["lengths"])
        return _batch_metrics(logits, batch["labels"], batch["weights"])

    return jax.jit(train_step, donate_argnums=(0, 1, 2)), jax.jit(eval_step)


class Batcher:
    """Builds fixed-size global batches and places them on the mesh (each host feeds its own slice)."""

    def __init__(self, mesh: Mesh, batch_size: int, length_bucket: int = 0):
        devices = mesh.devices.size
        if batch_size % devices:
            raise UserError(
                f"batch_size {batch_size} does not divide by the {devices} devices; "
                f"use a multiple of {devices} (--config.batch_size / --config.eval_batch_size)"
            )
        self.batch_size = batch_size
        self.length_bucket = length_bucket
        self.sharding = NamedSharding(mesh, P("data"))
        self.per_process = batch_size // jax.process_count()

    def __call__(self, tokens, lengths, labels, indices) -> dict:
        real = len(indices)
        indices = np.concatenate([indices, np.zeros(self.batch_size - real, indices.dtype)])
        weights = (np.arange(self.batch_size) < real).astype(np.float32)
        arrays = {
            "tokens": trim_to_bucket(tokens[indices], lengths[indices], self.length_bucket),
            "lengths": lengths[indices],
            "labels": labels[indices],
            "weights": weights,
        }
        start = jax.process_index() * self.per_process
        return {
            name: jax.make_array_from_process_local_data(
                self.sharding, value[start : start + self.per_process], value.shape
            )
            for name, value in arrays.items()
        }


def evaluate(eval_step, params, batcher: Batcher, encoded) -> dict:
    tokens, lengths, labels = encoded
    totals = None
    for start in range(0, len(labels), batcher.batch_size):
        indices = np.arange(start, min(start + batcher.batch_size, len(labels)))
        metrics = eval_step(params, batcher(tokens, lengths, labels, indices))
        totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count}


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _write_curves(workdir: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_axis.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss_axis.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    accuracy_axis.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    accuracy_axis.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    loss_axis.set(xlabel="epoch", ylabel="binary cross-entropy", title="loss")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    temporary = workdir / "training_curves.tmp.png"
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, workdir / "training_curves.png")


def _write_logs(workdir: Path, history: list[dict], final: dict | None = None) -> None:
    lines = [json.dumps(h) for h in history] + ([json.dumps(final)] if final else [])
    _write_atomic(workdir / "metrics.jsonl", "".join(line + "\n" for line in lines))
    if history:
        _write_curves(workdir, history)


def _tensorboard(writer, entry: dict) -> None:
    for key, value in entry.items():
        if key not in ("epoch", "step"):
            writer.add_scalar(key, value, entry["epoch"])
    writer.flush()


def maybe_initialize_distributed(config) -> None:
    if config.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()


def train_and_evaluate(config, workdir: str | Path) -> dict:
    maybe_initialize_distributed(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    log = print if is_main else (lambda *a, **k: None)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated = NamedSharding(mesh, P())
    train_batcher = Batcher(mesh, config.batch_size, config.length_bucket)
    eval_batcher = Batcher(mesh, config.eval_batch_size, config.length_bucket)

    run = ckpt.RunCheckpoints(workdir, keep=config.keep_checkpoints)
    resume_step = run.latest.latest_step()
    meta = ckpt.read_meta(run.latest, resume_step) if resume_step is not None else None
    changed = sorted(k for k in config if meta and k not in RESUMABLE_CHANGES and meta["config"].get(k) != config[k])
    if changed:
        raise UserError(
            f"{workdir} holds a run with a different config (changed: {', '.join(changed)}); "
            "use a new --workdir or the same settings to resume"
        )

    splits = data_lib.load_splits(config)
    vocabulary = (
        Vocabulary.from_json(meta["vocabulary"]) if meta else Vocabulary.fit(splits.train.texts, config.vocab_size)
    )
    encoded = {
        name: (*vocabulary.encode(split.texts, config.max_len), split.labels)
        for name, split in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))
    }
    log(
        f"data {config.dataset}: train {len(splits.train)}, validation {len(splits.validation)}, "
        f"test {len(splits.test)}; vocabulary {vocabulary.size} ids; {len(jax.devices())} device(s)"
    )

    kwargs = model_kwargs(config, vocabulary.size)
    try:
        model = create_model(kwargs, config.seed)
    except (ValueError, TypeError) as error:  # e.g. an unknown cell, pooling or dtype name
        raise UserError(f"invalid model settings: {error}; see lstm_jax/config.py for the choices") from None
    if config.embedding_init == "ppmi_svd" and meta is None:  # a resumed run restores its embeddings instead
        vectors = ppmi_svd_embeddings(encoded["train"][0], vocabulary.size, config.embedding_dim, seed=config.seed)
        for embed in model.embeddings():
            scale = float(jnp.std(embed.embedding[...])) / max(float(vectors.std()), 1e-8)
            embed.embedding[...] = jnp.asarray(vectors * scale)
    elif config.embedding_init not in ("random", "ppmi_svd"):
        raise UserError(f"unknown embedding_init {config.embedding_init!r}; use random or ppmi_svd")
    steps_per_epoch = math.ceil(len(splits.train) / config.batch_size)
    optimizer = nnx.Optimizer(model, make_optimizer(config, steps_per_epoch), wrt=nnx.Param)
    train_step, eval_step = make_steps(model, optimizer, config.seed, config.ema_decay)
    params = jax.device_put(nnx.state(model), replicated)
    opt_state = jax.device_put(nnx.state(optimizer), replicated)
    ema = jax.tree.map(jnp.copy, params) if config.ema_decay > 0 else None

    position = {"step": 0, "epoch": 0, "batch": 0, "sums": [0.0, 0.0, 0.0, 0.0]}
    history: list[dict] = []
    if meta is not None:
        params, opt_state, ema, meta = run.restore(resume_step, params, opt_state, ema)
        position, history = meta["position"], meta["history"]
        log(f"resumed from step {position['step']} (epoch {position['epoch'] + 1}, batch {position['batch']})")

    def make_meta():
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "config": config.to_dict(),
            "model_kwargs": kwargs,
            "vocabulary": vocabulary.to_json(),
            "max_len": config.max_len,
            "position": position,
            "history": history,
            "rng": {"seed": config.seed, "step": position["step"]},
            "inference_item": "ema" if ema is not None else "params",
        }

    def finished_early() -> bool:
        patience = config.early_stopping_patience
        if not patience or len(history) <= patience:
            return False
        best_epoch = max(range(len(history)), key=lambda i: history[i]["val_accuracy"])
        return len(history) - 1 - best_epoch >= patience

    if is_main:  # TensorBoard event files, written without TensorFlow
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(workdir / "tensorboard"))
    tokens, lengths, labels = encoded["train"]
    sums = jnp.asarray(position["sums"], jnp.float32)  # the epoch's loss, correct, count, non-finite steps
    stop = _StopRequest()
    try:
        while position["epoch"] < config.num_epochs and not finished_early() and not stop.requested:
            epoch, start_time = position["epoch"], time.time()
            order = epoch_order(config.seed, epoch, len(labels))
            sums = jnp.asarray(position["sums"], jnp.float32)
            bar = tqdm(
                range(position["batch"], steps_per_epoch),
                desc=f"epoch {epoch + 1}/{config.num_epochs}",
                initial=position["batch"],
                total=steps_per_epoch,
                disable=None if is_main else True,
                leave=False,
            )
            for batch_index in bar:
                if stop.requested:
                    break
                indices = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
                batch = train_batcher(tokens, lengths, labels, indices)
                params, opt_state, ema, metrics = train_step(params, opt_state, ema, batch, position["step"])
                sums = sums + jnp.stack([metrics[k] for k in ("loss", "correct", "count", "nonfinite")])
                position = {**position, "step": position["step"] + 1, "batch": batch_index + 1}
                if batch_index % 20 == 0:
                    bar.set_postfix(loss=f"{float(sums[0] / max(float(sums[2]), 1)):.4f}")
                if position["step"] % config.checkpoint_every_steps == 0 and position["batch"] < steps_per_epoch:
                    position["sums"] = _checked_sums(sums, position)
                    run.save(position["step"], params, opt_state, ema, make_meta())
            bar.close()
            if stop.requested:
                break
            loss_sum, correct_sum, count, _ = _checked_sums(sums, position)
            validation = evaluate(eval_step, _inference(params, ema), eval_batcher, encoded["validation"])
            entry = {
                "epoch": epoch + 1,
                "step": position["step"],
                "train_loss": loss_sum / max(count, 1.0),
                "train_accuracy": correct_sum / max(count, 1.0),
                "val_loss": validation["loss"],
                "val_accuracy": validation["accuracy"],
                "epoch_seconds": time.time() - start_time,
            }
            history.append(entry)
            position = {"step": position["step"], "epoch": epoch + 1, "batch": 0, "sums": [0.0, 0.0, 0.0, 0.0]}
            run.save(position["step"], params, opt_state, ema, make_meta(), val_accuracy=validation["accuracy"])
            log(
                f"epoch {epoch + 1:3d}/{config.num_epochs}  train loss {entry['train_loss']:.4f}  "
                f"train acc {100 * entry['train_accuracy']:.2f}%  val loss {entry['val_loss']:.4f}  "
                f"val acc {100 * entry['val_accuracy']:.2f}%  ({entry['epoch_seconds']:.1f}s)"
            )
            if is_main:
                _write_logs(workdir, history)
                _tensorboard(writer, entry)
    finally:
        stop.release()
    if stop.requested:
        if is_main:
            writer.close()
        position["sums"] = [0.0, 0.0, 0.0, 0.0] if position["batch"] == 0 else _checked_sums(sums, position)
        run.save(position["step"], params, opt_state, ema, make_meta())
        run.close()
        print(
            f"interrupted: saved step {position['step']} in {workdir}; rerun the same command to resume",
            file=sys.stderr,
        )
        raise KeyboardInterrupt

    if finished_early():
        log(f"early stopping: no better validation accuracy for {config.early_stopping_patience} epochs")
    test_step = position["step"]
    if config.test_checkpoint == "best" and run.best.best_step() is not None:
        test_step = run.best.best_step()
        params, _, ema, _ = run.restore(test_step, params, opt_state, ema, manager=run.best)
    test = evaluate(eval_step, _inference(params, ema), eval_batcher, encoded["test"])
    final = {
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "test_checkpoint_step": test_step,
        "best_val_accuracy": max((h["val_accuracy"] for h in history), default=None),
    }
    if is_main:
        _write_logs(workdir, history, final)
        writer.close()
    run.close()
    log(f"Test loss {test['loss']:.4f} (checkpoint step {test_step})")
    log(f"Accuracy: {100 * test['accuracy']:.2f}%")
    return final


def _inference(params, ema):
    """The weights evaluated and used for prediction: the moving average when there is one."""
    return ema if ema is not None else params


class _StopRequest:
    """Ctrl-C (SIGINT) asks the loop to stop after the current step; a second Ctrl-C interrupts at once.

    A flag rather than KeyboardInterrupt, because libraries on the path (checkpointing, plotting) may swallow
    the exception or be left half-way by it.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def release(self):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _checked_sums(sums, position) -> list[float]:
    """Fetches the running sums; a non-finite loss or parameter stops training before anything bad is saved."""
    loss_sum, correct_sum, count, nonfinite_steps = (float(x) for x in jax.device_get(sums))
    if nonfinite_steps or not math.isfinite(loss_sum):
        raise NonFiniteLoss(
            f"the training loss or parameters became non-finite by step {position['step']}; "
            "the last good checkpoint is kept. "
            "Lower --config.learning_rate or set --config.grad_clip_norm"
        )
    return [loss_sum, correct_sum, count, nonfinite_steps]
