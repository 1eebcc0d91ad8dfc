"""Every checkpoint of the job goes through here: training saves, resume, and prediction's restore.

A work directory holds two orbax managers: ``DIR/checkpoints`` (the latest few) and ``DIR/best`` (the best
by validation accuracy). Each checkpoint has two items:

* ``state``: the whole train state as a nested tree **by name** (``params/encoder/layers/0/...``,
  ``opt_state/0/mu/...``, ``step``, ``sums/loss``, ...), built from the state's pytree paths;
* ``meta`` (JSON): the format version, the config, the vocabulary, the sizes the data decided (:func:`run_meta`),
  the finished epochs' history, and the name, shape and dtype of every saved array.

Restoring first compares the saved names, shapes and dtypes with those of the state the current code
builds, so a renamed, reordered or resized parameter is a one-line error instead of a silent mix-up.
Saves are asynchronous (training goes on while orbax writes) and atomic: orbax writes to a temporary
folder and renames it when complete, so a run killed while saving keeps its earlier checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from lstm_jax.sentiment.errors import CheckpointReadError, CheckpointWriteError, UserError

FORMAT_VERSION = 3  # 3: the config, vocabulary and data sizes once; parameters apart from fixed tables


class DamagedCheckpoint(CheckpointReadError):
    """A checkpoint folder that cannot be read (partly written, corrupted): an older one may still serve."""


class UnreadableCheckpoint(CheckpointReadError):
    """A checkpoint we may not read (permissions, an I/O error): not proven damaged, so never deleted."""


class IncompatibleCheckpoint(CheckpointReadError):
    """A whole checkpoint that this code cannot use (another format, another model): no older one will do."""


# ------------------------------------------------------------------------------------------ names


def _key_name(key) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _leaf_path(path) -> str:
    # NNX variables add a trailing ".value" to every parameter's path: drop it, the name says enough.
    names = [_key_name(key) for key in path]
    if len(names) > 1 and names[-1] == "value":
        names = names[:-1]
    return "/".join(names)


def named_leaves(tree) -> dict[str, object]:
    """``{"params/embed/embedding": leaf, ...}``: every leaf of a pytree under its path."""
    leaves = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        leaves[_leaf_path(path)] = leaf
    return leaves


def _nest(flat: dict[str, object]) -> dict:
    nested: dict = {}
    for name, leaf in flat.items():
        *parents, last = name.split("/")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = leaf
    return nested


def _flatten(nested: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for name, value in nested.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}/"))
        else:
            flat[prefix + name] = value
    return flat


def signature(tree) -> dict[str, list]:
    """``{name: [shape, dtype]}`` of every leaf: what meta records and restore compares."""
    return {name: [list(leaf.shape), str(leaf.dtype)] for name, leaf in named_leaves(tree).items()}


def check_compatible(saved: dict, wanted: dict, where: str) -> None:
    """A one-line error naming the first differences between two signatures."""
    missing, unexpected = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    describe = lambda shape_dtype: f"{tuple(shape_dtype[0])} {shape_dtype[1]}"  # noqa: E731
    different = [f"{n}: saved {describe(saved[n])}, model {describe(wanted[n])}"
                 for n in sorted(set(saved) & set(wanted)) if saved[n] != wanted[n]]  # fmt: skip
    problems = (
        [f"missing {', '.join(missing[:3])}"] * bool(missing)
        + [f"unexpected {', '.join(unexpected[:3])}"] * bool(unexpected)
        + [f"changed {', '.join(different[:3])}"] * bool(different)
    )
    if problems:
        raise IncompatibleCheckpoint(
            f"{where} does not match the model this code builds ({'; '.join(problems)}); "
            "use the lstm_jax version that wrote it, or retrain in a new --workdir"
        )


# ------------------------------------------------------------------------------------------ managers


@contextlib.contextmanager
def _warnings_silenced():
    """Orbax logs a warning for every option a read-only manager ignores, and calls the folder "read only" (it is
    merely opened for reading): noise for someone who only loads a model, from Python as from the CLIs."""
    from absl import logging

    previous = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(previous)


def _manager(directory: Path, read_only: bool = False, **options) -> ocp.CheckpointManager:
    try:
        with _warnings_silenced() if read_only else contextlib.nullcontext():
            return ocp.CheckpointManager(
                directory.absolute(),
                options=ocp.CheckpointManagerOptions(
                    create=not read_only,
                    read_only=read_only,
                    cleanup_tmp_directories=not read_only,
                    enable_async_checkpointing=not read_only,
                    **options,
                ),
            )
    except (ValueError, KeyError, TypeError) as error:  # orbax parses every step's metrics and metadata on opening
        detail = str(error).splitlines()[0][:160] if str(error) else ""
        raise DamagedCheckpoint(f"a file in {directory} is damaged ({type(error).__name__}: {detail}); move the "
                                "damaged step folder out of it (nothing was deleted) or use a new --workdir") from None


def _first_unreadable(folder: Path) -> str | None:
    """The first file or folder under ``folder`` that the operating system will not let us read, with its reason."""
    refused: list[OSError] = []
    for root, _, names in os.walk(folder, onerror=refused.append):
        for name in names:
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as handle:
                    handle.read(1)
            except OSError as error:
                return f"{path} ({error.strerror})"
    return f"{refused[0].filename} ({refused[0].strerror})" if refused else None


def _restore(manager: ocp.CheckpointManager, step: int, what: str, **items):
    """Some items of a checkpoint. A failure is :class:`UnreadableCheckpoint` when the operating system refuses a
    file (not proven damaged: it is kept), else :class:`DamagedCheckpoint` naming it, not an orbax traceback."""
    where = f"checkpoint {step} in {manager.directory}"
    # Asked first (a few files): orbax would report a refused file like damage, from its threads.
    if (unreadable := _first_unreadable(Path(manager.directory) / str(step))) is not None:
        raise UnreadableCheckpoint(f"cannot read {where}: {unreadable}; fix its permissions or the disk and "
                                   "rerun (nothing was deleted)")  # fmt: skip
    try:
        return manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # orbax raises many kinds for damaged folders
        detail = str(error).splitlines()[0][:200] if str(error) else ""
        raise DamagedCheckpoint(
            f"the {what} of {where} are unreadable or incomplete "
            f"({type(error).__name__}: {detail}); choose another step or retrain"
        ) from None


def check_version(meta, where: str) -> None:
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if isinstance(version, int) and version < FORMAT_VERSION:
        raise IncompatibleCheckpoint(
            f"{where} was made by an earlier version of lstm_jax (checkpoint format {version}; this one reads "
            f"{FORMAT_VERSION}); retrain it with this version (python train.py ... --workdir NEW_FOLDER) or use the "
            "lstm_jax version that wrote it"
        )
    if version != FORMAT_VERSION:
        raise IncompatibleCheckpoint(
            f"{where} has format version {version!r}, this lstm_jax reads version {FORMAT_VERSION}; "
            "retrain with this version or use the lstm_jax that wrote it"
        )


def run_meta(config: dict, vocabulary: list, sizes, history: list) -> dict:
    """A checkpoint's JSON item, each fact once: the config, the vocabulary and the sizes the data decided (a
    dataclass); the rest (the model, max_len, the tokenizer, which weights predict) is derived from them."""
    return {"config": config, "vocabulary": vocabulary, "sizes": dataclasses.asdict(sizes), "history": history}


class Checkpoints:
    """The checkpoints of one work directory: ``latest`` (the last few) and ``best`` (by validation accuracy)."""

    def __init__(self, workdir: str | Path, keep: int = 2, read_only: bool = False):
        self.workdir = Path(workdir)
        self._write_failed = False
        self.latest = _manager(self.workdir / "checkpoints", read_only, max_to_keep=keep)
        self.best = _manager(
            self.workdir / "best", read_only, max_to_keep=1, best_fn=lambda m: m["val_accuracy"], best_mode="max"
        )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def read_meta(self, step: int, manager: ocp.CheckpointManager | None = None) -> dict:
        """The JSON item alone; a clear error for a checkpoint that is not ours or not whole."""
        manager = manager or self.latest
        meta = _restore(manager, step, "metadata", meta=ocp.args.JsonRestore()).meta
        check_version(meta, f"checkpoint {step} in {manager.directory}")
        return meta

    def newest_meta(self) -> dict | None:
        """The metadata of the newest checkpoint whose metadata reads (None for a new run)."""
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                return self.read_meta(step)
            except DamagedCheckpoint as error:
                print(f"warning: checkpoint {step} is damaged ({error}); trying an older one", file=sys.stderr)
        return None

    def restore_newest(self, like) -> tuple[int, object, dict]:
        """(step, state, meta) of the newest intact checkpoint. Newer ones proven damaged (content read but not
        parsed) are said and deleted, so the resumed run can save those steps again; one the system will not let us
        read stops the run (:class:`UnreadableCheckpoint`) and nothing is deleted. With no intact latest checkpoint
        the best one (a whole state too) is the fallback."""
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                state, meta = self._restore_state(step, like, self.latest)
                return step, state, meta
            except DamagedCheckpoint as error:
                print(f"warning: checkpoint {step} is damaged; resuming from an older one ({error})", file=sys.stderr)
                self.latest.delete(step)
        if (best := self.best.best_step() if self.best.directory.is_dir() else None) is not None:
            print(f"warning: no intact checkpoint in {self.latest.directory}; resuming from the best one, step {best}",
                  file=sys.stderr)  # fmt: skip
            state, meta = self._restore_state(best, like, self.best)
            return best, state, meta
        raise UserError(f"no intact checkpoint in {self.latest.directory}; remove it or use a new --workdir")

    def save(self, step: int, state, meta: dict, val_accuracy: float | None = None) -> None:
        """Starts an asynchronous save of ``state`` to ``latest`` and, when ``val_accuracy`` is given, to ``best``.

        ``best`` is written (and awaited) first: a run killed between the two then replays the epoch from
        the older ``latest`` and writes ``best`` again, never the reverse.
        """
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_nest(named_leaves(state))),
            meta=ocp.args.JsonSave({**meta, "format_version": FORMAT_VERSION, "arrays": signature(state)}),
        )
        # One save in flight at a time: it keeps memory flat, and in a multi-process run two managers saving
        # at once collide in orbax's cross-process barriers.
        self.wait()
        with self._writing():
            if val_accuracy is not None and step not in self.best.all_steps():
                self.best.save(step, args=args, metrics={"val_accuracy": val_accuracy}, force=True)
                self.best.wait_until_finished()
            if step not in self.latest.all_steps():
                self.latest.save(step, args=args, force=True)

    def restore(self, step: int, like, manager: ocp.CheckpointManager | None = None):
        """The state saved at ``step``, in the structure (and shardings) of the pytree ``like``."""
        return self._restore_state(step, like, manager or self.latest)[0]

    def _restore_state(self, step: int, like, manager: ocp.CheckpointManager) -> tuple[object, dict]:
        meta = self.read_meta(step, manager)
        check_compatible(meta.get("arrays", {}), signature(like), f"checkpoint {step} in {manager.directory}")
        wanted = named_leaves(like)
        abstract = {
            name: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None))
            for name, leaf in wanted.items()
        }
        restored = _flatten(_restore(manager, step, "arrays", state=ocp.args.StandardRestore(_nest(abstract))).state)
        leaves = [restored[name] for name in wanted]  # named_leaves keeps the pytree's leaf order
        return jax.tree.unflatten(jax.tree.structure(like), leaves), meta

    def wait(self) -> None:
        with self._writing():
            self.latest.wait_until_finished()
            self.best.wait_until_finished()

    @contextlib.contextmanager
    def _writing(self):
        """A failed background write (a full disk, a quota) surfaces here, as one line: earlier checkpoints stay."""
        try:
            yield
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as error:
            self._write_failed = True
            # Tensorstore's messages end in the system's reason: "...: Failed to write 44 bytes...: File too large"
            detail = (str(error).splitlines() or [type(error).__name__])[0].rsplit(": ", 1)[-1].split(" [")[0]
            raise CheckpointWriteError(
                f"could not write a checkpoint in {self.workdir} ({detail}); free space or fix permissions, then "
                "rerun: the run resumes from its last complete checkpoint"
            ) from None

    def close(self) -> None:
        """Waits for the saves in flight, then stops orbax's background threads (safe to call twice).

        The explicit wait matters even without saves: orbax starts a thread when a manager is created, and
        closing without waiting let it print a traceback at interpreter exit."""
        if self._write_failed:
            return  # closing the managers after a failed write makes orbax's threads print; the process ends now
        try:
            self.wait()
        finally:
            with self._writing():
                self.latest.close()
                self.best.close()


def find(workdir: str | Path, step: int | None = None) -> tuple[Checkpoints, ocp.CheckpointManager, int]:
    """For prediction: the best checkpoint (else the latest), or the one with ``step``, opened read-only."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise UserError(f"workdir {workdir} does not exist; train first: python train.py --workdir {workdir}")
    if not (workdir / "best").is_dir() and not (workdir / "checkpoints").is_dir():
        raise UserError(f"no checkpoint in {workdir}; train first: python train.py --workdir {workdir}")
    run = Checkpoints(workdir, read_only=True)
    managers = [m for m in (run.best, run.latest) if m.directory.is_dir()]
    for manager in managers:
        steps = manager.all_steps()
        if step is None and steps:
            return run, manager, (manager.best_step() if manager is run.best else None) or max(steps)
        if step is not None and step in steps:
            return run, manager, step
    available = sorted({s for m in managers for s in m.all_steps()})
    if step is not None and available:
        raise UserError(f"no checkpoint for step {step} in {workdir}; available steps: {available}")
    raise UserError(f"no checkpoint in {workdir}; train first: python train.py --workdir {workdir}")


def restore_weights(run: Checkpoints, manager: ocp.CheckpointManager, step: int, like: dict, meta: dict | None = None):
    """Only some items of the saved state (``like``: ``{"params" or "ema": tree, "tables": tree}``), each into
    the structure of its tree; returns them by the same keys.

    The whole state is read by the names and shapes ``meta`` records (the optimizer's few MB included), so
    prediction never needs to rebuild the optimizer that wrote it.
    """
    meta = meta if meta is not None else run.read_meta(step, manager)
    saved = meta.get("arrays", {})
    for item, tree in like.items():
        weights = {k.removeprefix(item + "/"): v for k, v in saved.items() if k.startswith(item + "/")}
        check_compatible(weights, signature(tree), f"checkpoint {step} in {manager.directory}")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = {name: jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=device) for name, (shape, dtype)
                in saved.items()}  # fmt: skip
    restored = _flatten(_restore(manager, step, "parameters", state=ocp.args.StandardRestore(_nest(abstract))).state)
    return {item: jax.tree.unflatten(jax.tree.structure(tree), [restored[f"{item}/{name}"] for name in
                                                                 named_leaves(tree)])
            for item, tree in like.items()}  # fmt: skip
