"""The library refuses lengths it cannot read as whole steps (issue 40 item 12) and keeps integer lengths as before."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lstm_jax


def _layer(kind):
    return lstm_jax.make_recurrent("lstm", 3, 4, num_layers=1, bidirectional=kind == "bidirectional", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kind", ["forward", "bidirectional"])
@pytest.mark.parametrize(
    "lengths",
    [np.array([3.7, 2.0]), np.array([np.nan, 2.0]), [3.0, 1.0], jnp.array([2.0, 1.0]), np.array([True, False])],
)  # fmt: skip
def test_non_integer_lengths_are_a_value_error(kind, lengths):
    inputs = jnp.ones((2, 4, 3))
    with pytest.raises(ValueError, match="lengths must be integers"):
        _layer(kind)(inputs, lengths)


def test_float_lengths_are_refused_under_jit_too():
    layer = _layer("forward")
    with pytest.raises(ValueError, match="lengths must be integers, got dtype float32"):
        jax.jit(lambda x, n: layer(x, n))(jnp.ones((2, 4, 3)), jnp.array([3.0, 1.0]))


@pytest.mark.parametrize("lengths", [np.array([3, 1], np.int64), [3, 1], jnp.array([3, 1], jnp.int32)])
def test_integer_lengths_of_any_kind_give_the_same_outputs(lengths):
    layer, inputs = _layer("forward"), jax.random.normal(jax.random.key(0), (2, 4, 3))
    expected = layer(inputs, np.array([3, 1], np.int32))
    np.testing.assert_array_equal(np.asarray(layer(inputs, lengths)[0]), np.asarray(expected[0]))
