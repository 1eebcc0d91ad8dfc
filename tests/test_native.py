"""The native CPU LSTM and GRU kernels (lstm_jax/native.py): equal to the XLA recurrences, and a clean fallback."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lstm_jax
import lstm_jax.registry
from lstm_jax import fused, native
from lstm_jax.recurrent import RNN, choose_backend

pytestmark = pytest.mark.skipif(native.unavailable_reason() is not None, reason=str(native.unavailable_reason()))

# 24 rows split over the threads; 20 hidden units leave a tail past a whole vector of 8 or 16 lanes; 7 inputs.
BATCH, TIME, IN, HIDDEN = 24, 9, 7, 20
LENGTHS = jnp.asarray([0, 1, 2, 9, 9, 5, 3, 8, 9, 4, 6, 7, 1, 9, 2, 9, 0, 5, 9, 8, 3, 9, 7, 6])


def randomized(module, scale=0.5):
    state = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    new = [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    nnx.update(module, jax.tree.unflatten(treedef, new))
    return module


def loss_and_grads(layer, x, initial=None):
    def loss(layer, x, initial):
        outputs, carry = layer(x, LENGTHS, **({"initial_carry": initial} if initial is not None else {}))
        return jnp.sum(jnp.sin(outputs)) + sum(jnp.sum(jnp.cos(leaf)) for leaf in jax.tree.leaves(carry))

    return nnx.value_and_grad(loss, argnums=(0, 1, 2))(layer, x, initial)


def assert_trees_close(got, want, tolerance=1e-5):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_initial_carry", [False, True])
@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_native_equals_the_xla_recurrences_in_value_and_every_gradient(cell_name, reverse, with_initial_carry):
    cell = randomized(lstm_jax.registry.CELLS[cell_name](IN, HIDDEN, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (BATCH, TIME, IN))
    initial = None
    if with_initial_carry:
        initial = cell.initialize_carry((BATCH,))
        initial = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(5), a.shape), initial)
    got = loss_and_grads(RNN(cell, reverse=reverse, backend="native"), x, initial)
    for backend in ("fused", "scan") if cell_name == "lstm" else ("scan",):
        assert_trees_close(got, loss_and_grads(RNN(cell, reverse=reverse, backend=backend), x, initial))


def test_a_gru_without_biases_equals_scan():
    cell = randomized(lstm_jax.GRUCell(IN, HIDDEN, use_bias=False, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (BATCH, TIME, IN))
    assert_trees_close(loss_and_grads(RNN(cell, backend="native"), x), loss_and_grads(RNN(cell, backend="scan"), x))


@pytest.mark.parametrize("cell_name", ["lstm", "gru"])
def test_a_bidirectional_stack_on_auto_runs_native_and_equals_scan(cell_name):
    def stack(backend):
        layer = lstm_jax.make_recurrent(cell_name, IN, HIDDEN, num_layers=2, bidirectional=True, backend=backend,
                                        rngs=nnx.Rngs(0))  # fmt: skip
        return randomized(layer)

    auto = stack("auto")
    assert {rnn.backend for layer in auto.layers for rnn in (layer.forward_rnn, layer.backward_rnn)} == {"native"}
    x = jax.random.normal(jax.random.key(2), (BATCH, TIME, IN))
    # Two bidirectional layers give gradients up to ~150, where float32 rounding alone moves entries by ~2.5e-5
    # (XLA's scan and its Python loop differ that much here), so 1e-4 rather than the single layer's 1e-5.
    assert_trees_close(loss_and_grads(auto, x), loss_and_grads(stack("scan"), x), tolerance=1e-4)


@pytest.mark.parametrize("batch, hidden", [(1, 1), (5, 16), (64, 33)])
def test_the_kernel_equals_fused_at_edge_sizes_and_under_vmap(batch, hidden):
    keys = jax.random.split(jax.random.key(4), 5)
    x = jax.random.normal(keys[0], (2, TIME, batch, IN))  # a leading axis for vmap
    shapes = [(IN, 4 * hidden), (4 * hidden,), (hidden, 4 * hidden)]
    args = [0.4 * jax.random.normal(k, s) for k, s in zip(keys[1:], shapes)]
    mask = jnp.arange(TIME)[:, None] < jnp.arange(batch)[None, :] % (TIME + 1)
    carry = (jnp.zeros((batch, hidden)), jnp.ones((batch, hidden)))

    def run(recurrence):
        return jax.vmap(lambda x: recurrence(x, *args, mask, carry))(x)

    assert_trees_close(run(fused.native_lstm_recurrence), run(fused.lstm_recurrence))


@pytest.mark.parametrize("batch, hidden", [(1, 1), (64, 33)])
def test_the_gru_kernel_equals_the_cell_at_edge_sizes(batch, hidden):
    cell = randomized(lstm_jax.GRUCell(IN, hidden, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(6), (batch, TIME, IN))
    lengths = jnp.arange(batch) % (TIME + 1)
    got, want = RNN(cell, backend="native")(x, lengths), RNN(cell, backend="scan")(x, lengths)
    assert_trees_close(got, want)


def test_auto_keeps_fused_for_bfloat16_and_native_refuses_it_in_one_line():
    cell = lstm_jax.LSTMCell(IN, HIDDEN, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert choose_backend("auto", cell) == "fused"
    with pytest.raises(ValueError, match="backend='native' cannot run here: the native kernel is float32 only"):
        RNN(cell, backend="native")
    with pytest.raises(ValueError, match="backend='native' runs plain LSTMCell and GRUCell only, not SimpleRNNCell"):
        RNN(lstm_jax.SimpleRNNCell(IN, HIDDEN, rngs=nnx.Rngs(0)), backend="native")
    assert choose_backend("auto", lstm_jax.GRUCell(IN, HIDDEN, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))) == "scan"


FALLBACK = textwrap.dedent("""
    import jax.numpy as jnp
    from flax import nnx
    import lstm_jax
    from lstm_jax import native
    layer = lstm_jax.make_recurrent("lstm", 3, 5, rngs=nnx.Rngs(0))
    outputs, _ = layer(jnp.ones((2, 4, 3)), jnp.asarray([4, 2]))
    try:
        lstm_jax.RNN(lstm_jax.LSTMCell(3, 5, rngs=nnx.Rngs(0)), backend="native")
    except ValueError as error:
        print("refused:", error)
    print("backend:", layer.layers[0].backend, "outputs:", outputs.shape, "reason:", native.unavailable_reason())
""")


@pytest.mark.parametrize(
    "environment, reason",
    [
        ({"PATH": "", "CXX": ""}, "no C++ compiler found"),  # a machine without a compiler
        ({"CXX": "false"}, "compiling lstm_cpu.cc with /usr/bin/false failed"),  # a compiler that fails
        ({"LSTM_JAX_NATIVE": "0"}, "LSTM_JAX_NATIVE=0 turned it off"),
    ],
)
def test_without_the_kernel_auto_falls_back_to_fused_and_native_says_why(tmp_path, environment, reason):
    if environment.get("CXX") == "false" and not os.path.exists("/usr/bin/false"):
        pytest.skip("no /usr/bin/false here")
    env = {**os.environ, "LSTM_JAX_CACHE": str(tmp_path), "JAX_PLATFORMS": "cpu", **environment}
    result = subprocess.run([sys.executable, "-c", FALLBACK], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backend: fused outputs: (2, 4, 5)" in result.stdout
    assert f"reason: {reason}" in result.stdout
    refused = next(line for line in result.stdout.splitlines() if line.startswith("refused:"))
    assert "backend='native' cannot run here: the native kernel is unavailable" in refused
    assert not list(tmp_path.glob("*.so"))  # nothing half-built left behind


def test_the_build_is_cached_by_source_and_put_in_place_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_JAX_CACHE", str(tmp_path))
    first = native.build()
    assert first.parent == tmp_path and first.stat().st_size > 0
    modified = first.stat().st_mtime_ns
    assert native.build() == first and first.stat().st_mtime_ns == modified  # cached: not compiled again
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no scratch folder left


SEVERAL_DEVICES = textwrap.dedent("""
    import os
    from lstm_jax.sentiment.process import startup
    startup.one_cpu_device_per_core()  # what predict.py and serve.py do before JAX starts
    import jax
    from flax import nnx
    import lstm_jax
    picked = [lstm_jax.make_recurrent(c, 3, 5, rngs=nnx.Rngs(0)).layers[0].backend for c in ("lstm", "gru")]
    print("devices:", jax.device_count(), "picked:", picked)
""")


@pytest.mark.parametrize(
    "environment, expected",
    [
        ({}, "devices: 1 picked: ['native', 'native']"),  # the kernel uses every core from one device
        ({"LSTM_JAX_NATIVE": "0"}, "devices: 2 picked: ['fused', 'scan']"),  # without it, one device per core
        # XLA would run the custom call whole on each device of a sharded batch: several devices keep XLA's loops
        ({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, "devices: 2 picked: ['fused', 'scan']"),
    ],
)
def test_prediction_startup_and_auto_with_one_or_several_cpu_devices(environment, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "LSTM_JAX_NATIVE")}
    env.update({"JAX_PLATFORMS": "cpu", **environment})
    result = subprocess.run([sys.executable, "-c", SEVERAL_DEVICES], env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    if os.cpu_count() == 1 and not environment.get("XLA_FLAGS"):
        expected = expected.replace("devices: 2", "devices: 1")
    assert expected in result.stdout


DIRECT_CALL = textwrap.dedent("""
    import jax.numpy as jnp
    from lstm_jax import fused, native
    x, w_x, b, w_h = jnp.ones((3, 2, 4)), jnp.ones((4, 8)), jnp.zeros(8), jnp.ones((2, 8))
    try:
        (c, h), y = fused.native_lstm_recurrence(x, w_x, b, w_h, jnp.ones((3, 2), bool), (jnp.zeros((2, 2)),) * 2)
        print("outputs:", y.shape)
    except native.Unavailable as error:
        print("unavailable:", error)
""")


@pytest.mark.parametrize(
    "environment, expected",
    [({}, "outputs: (3, 2, 2)"), ({"LSTM_JAX_NATIVE": "0"}, "unavailable: the native CPU kernel is unavailable")],
)
def test_a_direct_call_registers_the_kernel_first_or_says_why_it_cannot(environment, expected):
    # A fresh process where no layer ran yet: the call itself registers the FFI targets (it once failed in XLA).
    env = {**{k: v for k, v in os.environ.items() if k != "LSTM_JAX_NATIVE"}, "JAX_PLATFORMS": "cpu", **environment}
    result = subprocess.run([sys.executable, "-c", DIRECT_CALL], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
