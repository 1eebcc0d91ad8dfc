"""The recurrence split over several CPU devices (one share of the batch each) equals the whole-batch recurrence.

The split needs several devices, which XLA creates only before JAX starts, so the comparison runs in a child
process (this file run as a script) with ``--xla_force_host_platform_device_count=2``; the reference is the
same call with the split turned off in that process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lstm_jax import recurrent
from lstm_jax.cells import GRUCell, LSTMCell
from lstm_jax.recurrent import RNN, Bidirectional

IN, HIDDEN, TIME = 3, 5, 7
LENGTHS = [TIME, 1, 3, 0, 5, 6]  # full, one step, middle, empty, almost full: padding in every share
CASES = [(cell, backend, layout) for cell, backend in (("lstm", "auto"), ("lstm", "scan"), ("gru", "auto"))
         for layout in ("forward", "reverse", "bidirectional")]  # fmt: skip


def _layer(cell: str, backend: str, layout: str) -> nnx.Module:
    cell_class = {"lstm": LSTMCell, "gru": GRUCell}[cell]

    def rnn(reverse: bool, seed: int) -> RNN:
        built = cell_class(IN, HIDDEN, rngs=nnx.Rngs(seed))
        state = nnx.state(built, nnx.Param)  # random biases too, so every gate matters
        leaves, treedef = jax.tree.flatten(state)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        nnx.update(built, jax.tree.unflatten(treedef, [0.5 * jax.random.normal(k, x.shape) for k, x in
                                                       zip(keys, leaves)]))  # fmt: skip
        return RNN(built, reverse=reverse, backend=backend)

    if layout == "bidirectional":
        return Bidirectional(rnn(False, 0), rnn(True, 1))
    return rnn(layout == "reverse", 0)


def _value_and_gradients(layer: nnx.Module, x: jax.Array, lengths: jax.Array):
    def loss(layer, x):
        outputs, carry = layer(x, lengths)
        return jnp.sum(jnp.sin(outputs)) + sum(jnp.sum(jnp.cos(leaf)) for leaf in jax.tree.leaves(carry))

    value, (params, inputs) = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1)))(layer, x)
    return [np.asarray(leaf) for leaf in jax.tree.leaves((value, nnx.state(params, nnx.Param), inputs))]


def _splits(layer: nnx.Module, x: jax.Array, lengths: jax.Array) -> bool:
    """Whether the compiled call runs a ``shard_map`` (the split) somewhere."""
    graphdef, state = nnx.split(layer)
    return "shard_map" in str(jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x, lengths))(state, x))


def compare_in_this_process() -> dict:
    """For every case (and the bidirectional ones again with a batch the devices do not divide): whether the
    call splits, and the largest relative difference in value and gradients from the same call run whole."""
    results = {}
    for batch in (len(LENGTHS), len(LENGTHS) - 1):
        lengths = jnp.asarray(LENGTHS[:batch])
        x = jax.random.normal(jax.random.key(2), (batch, TIME, IN))
        for case in CASES if batch == len(LENGTHS) else CASES[2::3]:  # an odd batch: the bidirectional layers
            layer = _layer(*case)
            split = _splits(layer, x, lengths)
            got = _value_and_gradients(layer, x, lengths)
            whole_mesh, recurrent.cpu_batch_mesh = recurrent.cpu_batch_mesh, lambda batch: None
            try:
                want = _value_and_gradients(layer, x, lengths)
            finally:
                recurrent.cpu_batch_mesh = whole_mesh
            error = max(float(np.max(np.abs(g - w) / (1.0 + np.abs(w)))) for g, w in zip(got, want))
            results["/".join((*case, str(batch)))] = {"split": split, "error": error}
    return results


def test_one_device_runs_the_recurrence_whole():
    assert len(jax.devices()) == 1 and recurrent.cpu_batch_mesh(6) is None


def test_the_split_over_two_cpu_devices_equals_the_whole_batch_in_values_and_gradients():
    environment = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                   "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}  # fmt: skip
    child = subprocess.run([sys.executable, __file__], env=environment, capture_output=True, timeout=600)
    assert child.returncode == 0, child.stderr.decode()[-3000:]
    results = json.loads(child.stdout.decode().splitlines()[-1])
    assert len(results) == len(CASES) + len(CASES[2::3])
    for name, result in results.items():
        divisible = name.endswith(f"/{len(LENGTHS)}")
        assert result["split"] == divisible, name  # an odd batch runs whole: no device gets a share too many
        assert result["error"] <= 1e-5, (name, result["error"])


if __name__ == "__main__":
    assert len(jax.devices()) == 2, jax.devices()
    print(json.dumps(compare_in_this_process()))
