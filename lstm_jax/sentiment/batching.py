"""The one batcher of the job: which examples form each batch, and how many time steps it is padded to.

Training, evaluation and prediction all work the same way:

1. the encoded examples (``tokens <int32>[n, max_len]``, ``lengths <int32>[n]``, ``labels <int32>[n]``)
   sit in one place (on the devices, for training and evaluation: a few MB sent once);
2. :func:`plan_batches` decides on the host, from the lengths alone, the example indices of every batch
   (``<int32>[batches, batch_size]``, ``-1`` filling the last short batch) and each batch's padded time
   length, a multiple of ``length_bucket`` (at most ``max_len``) so that few shapes ever compile;
3. :func:`take_batch`, inside the jitted step, gathers a batch from the indices: rows marked ``-1`` get
   weight 0, and the tokens are cut to the batch's padded length (a static shape).

Evaluation and prediction sort by length first, so each batch is padded only as far as its own longest
example. Training keeps the shuffled order (the batches are exactly what the shuffle gives) or, with a length
pool (:func:`plan_training_batches`), sorts each pool of a few batches' worth of shuffled examples by length
before cutting it into batches, then shuffles the batches.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    indices: np.ndarray  # <int32>[batches, batch_size]: example indices, -1 where the batch has no example
    time: tuple[int, ...]  # each batch's padded time length (a static shape for the step that runs it)

    def __len__(self) -> int:
        return len(self.time)


def padded_time(longest: int, length_bucket: int, max_len: int) -> int:
    """``longest`` rounded up to a multiple of ``length_bucket``, within [1, max_len]; bucket 0 = max_len."""
    if not length_bucket:
        return max_len
    return min(max(-(-longest // length_bucket), 1) * length_bucket, max_len)


def bucket_sizes(length_bucket: int, max_len: int) -> list[int]:
    """Every padded time length a job with these settings can compile."""
    return sorted({padded_time(n, length_bucket, max_len) for n in range(1, max_len + 1)})


def plan_batches(
    lengths: np.ndarray, batch_size: int, length_bucket: int, max_len: int, order: np.ndarray | None = None
) -> BatchPlan:
    """Batches of ``batch_size`` over ``order`` (default: by increasing length, for evaluation and prediction)."""
    lengths = np.asarray(lengths)
    if order is None:
        order = np.argsort(lengths, kind="stable")
    batches = -(-len(order) // batch_size)
    indices = np.full(batches * batch_size, -1, np.int32)
    indices[: len(order)] = order
    indices = indices.reshape(batches, batch_size)
    longest = np.where(indices >= 0, lengths[np.maximum(indices, 0)], 0).max(axis=1, initial=0)
    return BatchPlan(indices, tuple(padded_time(int(n), length_bucket, max_len) for n in longest))


def plan_training_batches(lengths: np.ndarray, batch_size: int, length_bucket: int, max_len: int,
                          order: np.ndarray, pool_batches: int, rng: np.random.Generator) -> BatchPlan:  # fmt: skip
    """One epoch's batches over the shuffled ``order``. ``pool_batches`` > 1: each consecutive run of
    ``pool_batches * batch_size`` examples of ``order`` is sorted by length (stably) before it is cut into
    batches, and the batches are then put in ``rng``'s order, so a batch holds texts of similar lengths and
    pads far fewer steps (Rotten Tomatoes, pools of 8 batches padded to multiples of 16: 28 steps per batch on
    average instead of 47: benchmarks/padding.py), while the examples that meet in a pool still change every
    epoch. 0 or 1: the batches of ``order``."""
    if pool_batches <= 1:
        return plan_batches(lengths, batch_size, length_bucket, max_len, order)
    lengths, pool = np.asarray(lengths), pool_batches * batch_size
    pools = [order[start : start + pool] for start in range(0, len(order), pool)]
    sorted_order = np.concatenate([part[np.argsort(lengths[part], kind="stable")] for part in pools])
    plan = plan_batches(lengths, batch_size, length_bucket, max_len, sorted_order)
    shuffled = rng.permutation(len(plan))
    return BatchPlan(plan.indices[shuffled], tuple(plan.time[i] for i in shuffled))


def run_in_batches(run_batch, tokens: np.ndarray, lengths: np.ndarray, batch_size: int, length_bucket: int,
                   max_len: int, fill: bool = True) -> np.ndarray:  # fmt: skip
    """``run_batch(tokens, lengths) -> <float32>[b]`` over all rows, sorted by length into batches of
    ``batch_size`` padded to their length bucket; results in input order. ``fill``: the last batch is filled
    with filler rows to ``batch_size`` (a shape already compiled); else it is cut to its real rows."""
    plan = plan_batches(lengths, batch_size, length_bucket, max_len)
    results = np.zeros(len(lengths), np.float32)
    examples = {"tokens": tokens, "lengths": lengths}
    for indices, time in zip(plan.indices, plan.time):
        real = indices >= 0
        batch = take_batch(examples, indices if fill else indices[real], time)
        output = np.asarray(run_batch(batch["tokens"], batch["lengths"]))
        results[indices[real]] = output[real] if fill else output
    return results


def take_batch(examples: dict, indices, time: int) -> dict:
    """The batch of ``indices`` from ``examples`` (NumPy or JAX arrays alike), padded to ``time`` steps.

    Returns ``tokens <int32>[batch, time]``, ``lengths``, ``labels`` (when the examples have them) and
    ``weights <float32>[batch]`` (0 for the ``-1`` rows that fill a short batch).
    """
    valid = indices >= 0
    rows = indices * valid  # -1 -> row 0, weighted out
    batch = {
        "tokens": examples["tokens"][rows, :time],
        "lengths": examples["lengths"][rows] * valid,
        "weights": valid.astype(np.float32),
    }
    for name in ("labels", "offsets"):  # offsets: logits added in training (the n-gram scorer's, out of fold)
        if name in examples:
            batch[name] = examples[name][rows]
    return batch
