"""The one batcher: batch plans, padded lengths and the gather, on NumPy and inside jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.sentiment import batching


@pytest.mark.parametrize(
    "longest, bucket, max_len, want",
    [(1, 16, 100, 16), (16, 16, 100, 16), (17, 16, 100, 32), (99, 16, 100, 100), (0, 16, 100, 16), (7, 0, 100, 100),
     (5, 4, 6, 6)],
)  # fmt: skip
def test_padded_time(longest, bucket, max_len, want):
    assert batching.padded_time(longest, bucket, max_len) == want


def test_bucket_sizes_are_the_only_times_a_plan_uses():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 101, 1000)
    plan = batching.plan_batches(lengths, 32, 16, 100, rng.permutation(1000))
    assert set(plan.time) <= set(batching.bucket_sizes(16, 100)) == {16, 32, 48, 64, 80, 96, 100}


def test_a_training_plan_keeps_the_order_and_fills_the_last_batch_with_minus_one():
    lengths = np.array([3, 9, 1, 4, 2])
    order = np.array([4, 0, 3, 1, 2])
    plan = batching.plan_batches(lengths, 2, 4, 12, order)
    np.testing.assert_array_equal(plan.indices, [[4, 0], [3, 1], [2, -1]])
    assert plan.time == (4, 12, 4) and len(plan) == 3


def test_an_evaluation_plan_sorts_by_length_and_covers_every_example_once():
    lengths = np.array([7, 1, 12, 3, 3, 9, 2])
    plan = batching.plan_batches(lengths, 3, 4, 12)
    real = plan.indices[plan.indices >= 0]
    assert sorted(real.tolist()) == list(range(7))
    assert list(lengths[real]) == sorted(lengths)
    assert plan.time == (4, 12, 12)


def test_a_length_pool_sorts_within_pools_only_and_pads_less():
    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 60, 1000)
    order = rng.permutation(1000)
    plain = batching.plan_batches(lengths, 32, 8, 100, order)
    pooled = batching.plan_training_batches(lengths, 32, 8, 100, order, 4, np.random.default_rng(5))
    assert pooled.indices.shape == plain.indices.shape
    assert sorted(pooled.indices[pooled.indices >= 0].tolist()) == list(range(1000))  # every example once
    pool_of = np.empty(1000, int)
    pool_of[order] = np.arange(1000) // (4 * 32)
    for row, time in zip(pooled.indices, pooled.time):
        real = row[row >= 0]
        assert len(set(pool_of[real])) == 1  # a batch never mixes two pools
        assert time == batching.padded_time(lengths[real].max(), 8, 100)
    assert sum(pooled.time) < 0.8 * sum(plain.time)
    again = batching.plan_training_batches(lengths, 32, 8, 100, order, 4, np.random.default_rng(5))
    np.testing.assert_array_equal(again.indices, pooled.indices)  # the same seed, the same epoch
    first_lengths = [int(lengths[row[row >= 0]].max()) for row in pooled.indices[:8]]
    assert first_lengths != sorted(first_lengths)  # the batches are shuffled, not left in length order


@pytest.mark.parametrize("pool", [0, 1])
def test_no_length_pool_keeps_the_shuffled_batches(pool):
    lengths = np.array([3, 9, 1, 4, 2])
    order = np.array([4, 0, 3, 1, 2])
    plan = batching.plan_training_batches(lengths, 2, 4, 12, order, pool, np.random.default_rng(0))
    np.testing.assert_array_equal(plan.indices, batching.plan_batches(lengths, 2, 4, 12, order).indices)


def test_take_batch_on_numpy_and_under_jit_agree():
    rng = np.random.default_rng(1)
    examples = {"tokens": rng.integers(1, 50, (5, 8)).astype(np.int32), "lengths": np.array([8, 2, 5, 1, 3], np.int32),
                "labels": np.array([1, 0, 1, 0, 1], np.int32)}  # fmt: skip
    indices = np.array([3, 0, -1, -1], np.int32)
    batch = batching.take_batch(examples, indices, 4)
    np.testing.assert_array_equal(batch["tokens"], examples["tokens"][[3, 0, 0, 0], :4])
    np.testing.assert_array_equal(batch["lengths"], [1, 8, 0, 0])
    np.testing.assert_array_equal(batch["weights"], [1, 1, 0, 0])
    np.testing.assert_array_equal(batch["labels"], [0, 1, 1, 1])
    jitted = jax.jit(batching.take_batch, static_argnums=2)(jax.tree.map(jnp.asarray, examples), indices, 4)
    for key in batch:
        np.testing.assert_array_equal(np.asarray(jitted[key]), batch[key])
