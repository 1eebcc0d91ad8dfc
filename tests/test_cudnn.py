"""The cuDNN backend, verified on a CPU: the same wrapper and weight conversion with JAX's ``lstm_ref`` in place of
the cuDNN kernel, against our scan path; and the choice of backend with the platform mocked."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import rnn as jax_rnn
from test_recurrent import HIDDEN, IN, TIME, randomize

import lstm_jax
from lstm_jax import cudnn, native
from lstm_jax.recurrent import RNN, StackedRNN, choose_backend

LENGTHS = np.array([TIME, 1, 0, 3, TIME + 4])  # full, one token, empty, middle, longer than the batch


@pytest.fixture
def fake_gpu(monkeypatch):
    """A machine where cuDNN 'is available': the platform says gpu and the kernel is JAX's reference.
    Returns the list the kernel appends to on every call."""
    calls = []

    def kernel(*args):
        calls.append(args[-2:])  # (num_layers, bidirectional)
        return cudnn.reference_kernel(*args)

    monkeypatch.setattr(cudnn, "platform", lambda: "gpu")
    monkeypatch.setattr(cudnn, "unavailable_reason", lambda: None)
    monkeypatch.setattr(cudnn, "cudnn_kernel", kernel)
    return calls


def with_backend(layer, backend):
    """A copy of ``layer`` (same parameters) whose RNNs ask for ``backend``."""
    copy = nnx.clone(layer)
    for _, module in nnx.iter_modules(copy):
        if isinstance(module, RNN):
            module.requested_backend = backend
    return copy


def stack(num_layers, bidirectional, use_bias=True, seed=0):
    layer = lstm_jax.make_recurrent(
        "lstm", IN, HIDDEN, num_layers=num_layers, bidirectional=bidirectional, use_bias=use_bias,
        backend="scan", rngs=nnx.Rngs(seed),
    )  # fmt: skip
    return randomize(layer, seed)


def initial_carries(layer, batch, seed=3):
    """Non-zero initial carries in the stack's structure."""

    def one(key):
        return jax.random.normal(key, (batch, HIDDEN)), jax.random.normal(jax.random.fold_in(key, 1), (batch, HIDDEN))

    carries = []
    for index, sub in enumerate(layer.layers):
        key = jax.random.key(seed + index)
        carries.append((one(key), one(jax.random.fold_in(key, 2))) if hasattr(sub, "forward_rnn") else one(key))
    return tuple(carries)


def loss(layer, x, lengths, carries):
    outputs, finals = layer(x, lengths, initial_carries=carries)
    return jnp.sum(jnp.sin(outputs)) + sum(jnp.sum(jnp.cos(leaf)) for leaf in jax.tree.leaves(finals))


def assert_trees_close(got, want, tolerance=1e-5):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, atol=tolerance, rtol=tolerance)


# Every stack shape with biases; without them (zeros are packed where cuDNN's weights hold the biases, and the
# bias gradient must not leak anywhere) the smallest and the largest stack.
STACKS = [(False, 1, True), (False, 2, True), (True, 1, True), (True, 2, True), (False, 1, False), (True, 2, False)]


@pytest.mark.parametrize(("bidirectional", "num_layers", "use_bias"), STACKS)
def test_cudnn_path_equals_scan_in_outputs_states_and_gradients(fake_gpu, bidirectional, num_layers, use_bias):
    scan = stack(num_layers, bidirectional, use_bias)
    on_cudnn = with_backend(scan, "cudnn")
    x = jax.random.normal(jax.random.key(1), (len(LENGTHS), TIME, IN))
    lengths = jnp.asarray(LENGTHS)
    carries = initial_carries(scan, len(LENGTHS))
    want_outputs, want_finals = scan(x, lengths, initial_carries=carries)
    got_outputs, got_finals = on_cudnn(x, lengths, initial_carries=carries)
    assert fake_gpu == [(num_layers, bidirectional)]  # the whole stack was one kernel call
    assert jax.tree.structure(got_finals) == jax.tree.structure(want_finals)
    assert_trees_close(got_outputs, want_outputs)
    assert_trees_close(got_finals, want_finals)
    empty = int(np.flatnonzero(LENGTHS == 0)[0])
    np.testing.assert_array_equal(got_outputs[empty], 0.0)
    assert_trees_close(jax.tree.map(lambda a: a[empty], got_finals), jax.tree.map(lambda a: a[empty], carries), 0)
    grad = nnx.jit(nnx.grad(loss, argnums=(0, 1, 3)))  # eager: twice the time (each op dispatched alone)
    want_grads, got_grads = grad(scan, x, lengths, carries), grad(on_cudnn, x, lengths, carries)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(got_grads))
    assert_trees_close(got_grads, want_grads)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_cudnn_path_with_batch_one_and_under_jit(fake_gpu, bidirectional):
    scan = stack(1, bidirectional)
    on_cudnn = with_backend(scan, "cudnn")
    x = jax.random.normal(jax.random.key(2), (1, TIME, IN))
    graphdef, params = nnx.split(on_cudnn)
    forward = jax.jit(lambda p, x, n: nnx.merge(graphdef, p)(x, n))
    for length in (0, 1, TIME):
        lengths = jnp.array([length])
        assert_trees_close(forward(params, x, lengths), scan(x, lengths))


def test_dropout_between_layers_runs_layer_by_layer_with_the_same_function(fake_gpu):
    scan = lstm_jax.make_recurrent("lstm", IN, HIDDEN, num_layers=2, dropout_rate=0.5, backend="scan", rngs=nnx.Rngs(0))
    on_cudnn = with_backend(scan, "cudnn")
    x, lengths = jax.random.normal(jax.random.key(1), (len(LENGTHS), TIME, IN)), jnp.asarray(LENGTHS)
    want = scan(x, lengths, rngs=nnx.Rngs(dropout=7))
    got = on_cudnn(x, lengths, rngs=nnx.Rngs(dropout=7))
    assert fake_gpu == [(1, False), (1, False)]  # the kernel's own dropout is never used
    assert_trees_close(got, want)


def test_reverse_only_and_time_major_layers(fake_gpu):
    cell = randomize(lstm_jax.LSTMCell(IN, HIDDEN, rngs=nnx.Rngs(0)))
    x, lengths = jax.random.normal(jax.random.key(1), (len(LENGTHS), TIME, IN)), jnp.asarray(LENGTHS)
    for kwargs in (dict(reverse=True), dict(time_major=True)):
        data = jnp.swapaxes(x, 0, 1) if kwargs.get("time_major") else x
        want = RNN(cell, backend="scan", **kwargs)(data, lengths)
        assert_trees_close(RNN(cell, backend="cudnn", **kwargs)(data, lengths), want)
    assert len(fake_gpu) == 2


def test_weights_round_trip_and_agree_with_jax_layout():
    layer = stack(2, True)
    cells = [rnn.cell for bi in layer.layers for rnn in (bi.forward_rnn, bi.backward_rnn)]
    flat = cudnn.pack_weights(cells)
    assert flat.shape == (jax_rnn.get_num_params_in_lstm(IN, HIDDEN, 2, True),)
    assert flat.shape == (cudnn.num_weights(IN, HIDDEN, 2, True),)
    w_ih, w_hh, b_ih, b_hh = jax_rnn.unpack_lstm_weights(flat, IN, HIDDEN, 2, True)
    for index, cell in enumerate(cells):  # JAX's own unpacking reads back our matrices, transposed
        np.testing.assert_array_equal(w_ih[index], cell.input_kernel[...].T)
        np.testing.assert_array_equal(w_hh[index], cell.recurrent_kernel[...].T)
        np.testing.assert_array_equal(b_ih[index] + b_hh[index], cell.bias[...])
    for params, cell in zip(cudnn.unpack_weights(flat, IN, HIDDEN, 2, True), cells, strict=True):
        for name, value in params.items():
            np.testing.assert_array_equal(value, getattr(cell, name)[...])
    # cuDNN weights with both biases (e.g. from jax.experimental.rnn.init_lstm_weight) fold into one bias.
    foreign = jax_rnn.init_lstm_weight(jax.random.key(0), IN, HIDDEN, 1, False)
    (params,) = cudnn.unpack_weights(foreign, IN, HIDDEN, 1, False)
    _, _, (b_ih,), (b_hh,) = (list(d.values()) for d in jax_rnn.unpack_lstm_weights(foreign, IN, HIDDEN, 1, False))
    np.testing.assert_allclose(params["bias"], b_ih + b_hh)
    with pytest.raises(ValueError, match=r"this LSTM needs \(\d+,\)"):
        cudnn.unpack_weights(foreign[:-1], IN, HIDDEN, 1, False)


def test_the_wrapper_checks_what_the_kernel_does_not():
    cell = lstm_jax.LSTMCell(IN, HIDDEN, rngs=nnx.Rngs(0))
    x, lengths = jnp.zeros((2, TIME, IN)), jnp.array([TIME, 1])
    carry = cell.initialize_carry((2,))

    def run(x, carries, bidirectional=False):
        return cudnn.lstm(x, lengths, [cell], carries, bidirectional=bidirectional, kernel=cudnn.reference_kernel)

    with pytest.raises(ValueError, match="initial carries must be"):
        run(x, [cell.initialize_carry((3,))])
    with pytest.raises(ValueError, match="over 5 input features"):
        run(jnp.zeros((2, TIME, 5)), [carry])
    with pytest.raises(ValueError, match="float32 only"):
        run(x.astype(jnp.bfloat16), [carry])
    with pytest.raises(ValueError, match="2 direction"):
        run(x, [carry], bidirectional=True)


def test_asking_for_cudnn_without_a_gpu_is_one_clear_error():
    assert jax.default_backend() == "cpu"
    with pytest.raises(ValueError, match="backend='cudnn' cannot run here: it needs an NVIDIA GPU") as error:
        RNN(lstm_jax.LSTMCell(IN, HIDDEN, rngs=nnx.Rngs(0)), backend="cudnn")  # refused when built
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "platform, cell, dtype, expected",
    [
        ("gpu", "lstm", jnp.float32, "cudnn"),
        ("gpu", "lstm", jnp.bfloat16, "scan"),
        ("gpu", "peephole_lstm", jnp.float32, "scan"),
        ("gpu", "gru", jnp.float32, "scan"),
        ("cpu", "lstm", jnp.float32, "native"),
        ("cpu-without-compiler", "lstm", jnp.float32, "fused"),
        ("cpu", "lstm", jnp.bfloat16, "fused"),
        ("cpu", "gru", jnp.float32, "native"),
        ("cpu-without-compiler", "gru", jnp.float32, "scan"),
        ("cpu", "simple_rnn", jnp.float32, "scan"),
        ("tpu", "lstm", jnp.float32, "scan"),
    ],
)
def test_auto_picks_by_platform_cell_and_dtype(monkeypatch, platform, cell, dtype, expected):
    monkeypatch.setattr(cudnn, "platform", lambda: platform.split("-")[0])
    if platform == "gpu":  # a GPU jaxlib: only the platform decides
        monkeypatch.setattr(cudnn, "unavailable_reason", lambda: None)
    # whether the native CPU kernel built here (lstm_jax/native.py)
    monkeypatch.setattr(native, "unavailable_reason", lambda: "no C++ compiler" if "without" in platform else None)
    layer = lstm_jax.make_recurrent(cell, IN, HIDDEN, dtype=dtype, rngs=nnx.Rngs(0))
    assert layer.layers[0].backend == expected
    assert choose_backend("scan", layer.layers[0].cell) == "scan"


def test_auto_runs_the_picked_kernel(fake_gpu):
    layer = lstm_jax.make_recurrent("lstm", IN, HIDDEN, bidirectional=True, rngs=nnx.Rngs(0))
    assert isinstance(layer, StackedRNN) and layer.layers[0].forward_rnn.backend == "cudnn"
    outputs, _ = layer(jnp.ones((2, TIME, IN)), jnp.array([TIME, 2]))
    assert fake_gpu == [(1, True)] and outputs.shape == (2, TIME, 2 * HIDDEN)


def test_a_checkpoint_trained_with_cudnn_predicts_on_a_cpu(trained_workdir, tmp_path):
    """The backend is saved with the run; prediction on a machine without cuDNN picks its own."""
    from test_reliability import predict

    workdir = tmp_path / "gpu-run"
    shutil.copytree(trained_workdir, workdir)
    for path in workdir.rglob("meta/metadata"):
        meta = json.loads(path.read_text())
        meta["config"]["backend"] = "cudnn"
        path.write_text(json.dumps(meta))
    source, output = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("a fine film\n")
    result = predict(workdir, source, output)
    assert result.returncode == 0, result.stderr
    assert "Predicted Sentiment:" in output.read_text()


@pytest.mark.skipif(cudnn.unavailable_reason() is not None, reason="needs an NVIDIA GPU (benchmarks/gpu.sh)")
@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_real_cudnn_kernel_matches_scan_on_a_gpu(bidirectional):
    """On a GPU: cuDNN itself, in full float32 (TF32 off), against the scan path; gradients finite (jax-ml/jax#15183
    reported NaN gradients and bidirectional mismatches, jax-ml/jax#16138 wrong outputs with old cuDNN)."""
    scan = stack(2, bidirectional)
    on_cudnn = with_backend(scan, "cudnn")
    x, lengths = jax.random.normal(jax.random.key(1), (len(LENGTHS), TIME, IN)), jnp.asarray(LENGTHS)
    carries = initial_carries(scan, len(LENGTHS))
    with jax.default_matmul_precision("float32"):
        assert_trees_close(on_cudnn(x, lengths, initial_carries=carries), scan(x, lengths, initial_carries=carries))
        grad = nnx.grad(loss, argnums=(0, 1, 3))
        got, want = grad(on_cudnn, x, lengths, carries), grad(scan, x, lengths, carries)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(got))
    assert_trees_close(got, want, 1e-4)


def test_a_run_trained_with_cudnn_may_resume_with_another_backend(tmp_path):
    from conftest import load_config

    from lstm_jax.sentiment.config import check_resumable
    from lstm_jax.sentiment.errors import UserError

    config = load_config()
    saved = {**config.to_dict(), "backend": "cudnn"}
    check_resumable(config, saved, tmp_path)  # only the backend differs: allowed
    with pytest.raises(UserError, match="changed: hidden_size"):
        check_resumable(config, {**saved, "hidden_size": config.hidden_size + 1}, tmp_path)
