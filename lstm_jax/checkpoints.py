"""Orbax checkpoints of a training run: the latest few in ``DIR/checkpoints``, the best one in ``DIR/best``.

Each checkpoint has three items:

* ``params``: the model's parameters, as the list of leaves of ``nnx.state(model, nnx.Param)``;
* ``opt_state``: the optimizer's state, likewise (Adam moments, step count);
* ``ema`` (when ``config.ema_decay > 0``): the moving average of the parameters, used for evaluation and
  prediction (``meta["inference_item"]`` names the item prediction loads);
* ``meta`` (JSON): format version, config, model constructor arguments, vocabulary, the position in
  training (step, epoch, batch within the epoch, the epoch's running sums), the history of finished epochs,
  and the RNG state. Every random draw derives from ``config.seed``: parameters from ``Rngs(seed)``, epoch
  shuffles from ``(seed, epoch)`` and dropout from ``fold_in(key(seed), step)``, so ``(seed, step)`` is the
  whole RNG state.

Leaves are saved as flat lists so restoring only needs a model built by the same code from ``meta``.
Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run killed while
saving leaves the previous checkpoints intact.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from lstm_jax.errors import UserError

FORMAT_VERSION = 1


def _manager(directory: Path, **options) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(
            create=True, cleanup_tmp_directories=True, enable_async_checkpointing=False, **options
        ),
    )


def _abstract(leaves):
    return [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding) for leaf in leaves]


class RunCheckpoints:
    """The two managers of one work directory."""

    def __init__(self, workdir: str | Path, keep: int = 2):
        workdir = Path(workdir)
        self.latest = _manager(workdir / "checkpoints", max_to_keep=keep)
        self.best = _manager(workdir / "best", max_to_keep=1, best_fn=lambda m: m["val_accuracy"], best_mode="max")

    def save(self, step: int, params, opt_state, ema, meta: dict, val_accuracy: float | None = None) -> None:
        """Saves to ``latest``, and first to ``best`` when an epoch ended (``val_accuracy`` given)."""
        items = dict(
            params=ocp.args.StandardSave(jax.tree.leaves(params)),
            opt_state=ocp.args.StandardSave(jax.tree.leaves(opt_state)),
            meta=ocp.args.JsonSave(meta),
        )
        if ema is not None:
            items["ema"] = ocp.args.StandardSave(jax.tree.leaves(ema))
        args = ocp.args.Composite(**items)
        # Best first: a run killed between the two saves then replays this epoch from the older latest.
        if val_accuracy is not None and step not in self.best.all_steps():
            self.best.save(step, args=args, metrics={"val_accuracy": val_accuracy}, force=True)
        if step not in self.latest.all_steps():
            self.latest.save(step, args=args, force=True)

    def restore(self, step: int, params, opt_state, ema, manager: ocp.CheckpointManager | None = None):
        """Restores (params, opt_state, ema, meta) into trees shaped like the given ones (ema may be None)."""
        manager = manager or self.latest
        trees = {"params": params, "opt_state": opt_state} | ({"ema": ema} if ema is not None else {})
        items = {name: ocp.args.StandardRestore(_abstract(jax.tree.leaves(tree))) for name, tree in trees.items()}
        restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore(), **items))
        params, opt_state, ema = (
            jax.tree.unflatten(jax.tree.structure(trees[name]), restored[name]) if name in trees else None
            for name in ("params", "opt_state", "ema")
        )
        return params, opt_state, ema, restored.meta

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _restore_items(manager: ocp.CheckpointManager, step: int, what: str, **items):
    """Restores some items of a checkpoint; a damaged one is a UserError naming it, not an orbax traceback."""
    try:
        return manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # orbax raises many kinds for damaged folders
        detail = str(error).splitlines()[0][:200] if str(error) else ""
        raise UserError(
            f"the {what} of checkpoint {step} in {manager.directory} are unreadable or incomplete "
            f"({type(error).__name__}: {detail}); choose another step or retrain"
        ) from None


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    """The JSON item alone; a clear error for a checkpoint that is not ours or not whole."""
    meta = _restore_items(manager, step, "metadata", meta=ocp.args.JsonRestore()).meta
    check_version(meta, f"checkpoint {step} in {manager.directory}")
    return meta


def check_version(meta, where: str) -> None:
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise UserError(
            f"{where} has format version {version}, this lstm_jax reads version {FORMAT_VERSION}; "
            "retrain with this version or use the lstm_jax that wrote it"
        )


def restore_params(manager: ocp.CheckpointManager, step: int, params, item: str = "params"):
    """Restores only the inference weights (``params`` or ``ema``) into a tree shaped like ``params``."""
    leaves = _abstract(jax.tree.leaves(params))
    restored = _restore_items(manager, step, "parameters", **{item: ocp.args.StandardRestore(leaves)})[item]
    return jax.tree.unflatten(jax.tree.structure(params), restored)
