"""sLSTM and mLSTM against the reference implementations (the ``xlstm`` package's vanilla sLSTM and
``mlstm_kernels``' native PyTorch mLSTM, both on CPU), recurrent == parallel, and long sequences."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT
from flax import nnx
from test_recurrent import randomize

import lstm_jax
import lstm_jax.registry
from lstm_jax.recurrent import RNN
from lstm_jax.xlstm import MLSTMCell, SLSTMCell

pytest.importorskip("xlstm")
pytest.importorskip("mlstm_kernels")
spec = importlib.util.spec_from_file_location("parity", ROOT / "benchmarks" / "parity.py")
parity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(parity)  # the reference adapters shared with benchmarks/parity.py

IN, HIDDEN, HEADS, TIME = 5, 8, 2, 9
LENGTHS = np.array([TIME, 1, 4, 0, 7])


def inputs(batch=len(LENGTHS), time=TIME, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, time, IN))


def assert_close(got, want, tolerance=1e-5):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=tolerance, rtol=tolerance)


# -------------------------------------------------------------------------------------------- sLSTM


@pytest.mark.parametrize("heads", [1, HEADS])
def test_slstm_matches_the_xlstm_reference_for_every_length(heads):
    cell = randomize(SLSTMCell(IN, HIDDEN, num_heads=heads, rngs=nnx.Rngs(0)))
    x = inputs()
    outputs, (c, n, m, h) = RNN(cell)(x, jnp.asarray(LENGTHS))
    for b, length in enumerate(LENGTHS):
        if length == 0:
            assert np.all(np.asarray(outputs[b]) == 0) and all(np.all(np.asarray(s[b]) == 0) for s in (c, n, m, h))
            continue
        want_outputs, (want_h, want_c, want_n, want_m) = parity.slstm_reference(cell, x[b : b + 1, :length])
        assert_close(outputs[b, :length], want_outputs[0])
        np.testing.assert_array_equal(outputs[b, length:], 0.0)
        for got, want in ((h, want_h), (c, want_c), (n, want_n), (m, want_m)):
            assert_close(got[b], want[0])


# -------------------------------------------------------------------------------------------- mLSTM


def test_mlstm_recurrent_matches_the_mlstm_kernels_reference():
    cell = randomize(MLSTMCell(IN, HIDDEN, num_heads=HEADS, rngs=nnx.Rngs(0)))
    x = inputs()
    outputs, (C, n, m) = RNN(cell, backend="scan")(x, jnp.asarray(LENGTHS))
    for b, length in enumerate(LENGTHS):
        if length == 0:
            assert np.all(np.asarray(outputs[b]) == 0) and np.all(np.asarray(C[b]) == 0)
            continue
        want, (want_C, want_n, want_m) = parity.mlstm_reference(cell, x[b : b + 1, :length])
        assert_close(outputs[b, :length], want[0])
        for got, expected in ((C, want_C), (n, want_n), (m, want_m)):
            assert_close(got[b], expected.reshape(got[b].shape))


def test_mlstm_parallel_matches_the_mlstm_kernels_parallel_reference():
    """The reference's parallel form starts with no stabiliser history: our initial m = -inf."""
    cell = randomize(MLSTMCell(IN, HIDDEN, num_heads=HEADS, rngs=nnx.Rngs(0)))
    x = inputs()
    C0, n0, m0 = cell.initialize_carry((x.shape[0],))
    carry = (C0, n0, jnp.full_like(m0, -jnp.inf))
    projected = jnp.swapaxes(cell.input_projection(x), 0, 1)
    _, outputs = cell.parallel(projected, jnp.ones(projected.shape[:2], bool), carry)
    want, _ = parity.mlstm_reference(cell, x, form="parallel")
    assert_close(jnp.swapaxes(outputs, 0, 1), want)


@pytest.mark.parametrize("form", ["parallel", "chunkwise"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_mlstm_parallel_equals_recurrent_in_values_states_and_gradients(bidirectional, form):
    """Chunkwise with chunks of 4 over 9 steps: three chunks, the last one padded."""

    def build(backend):
        layer = lstm_jax.make_recurrent("mlstm", IN, HIDDEN, num_layers=2, bidirectional=bidirectional,
                                        num_heads=HEADS, chunk_size=4, backend=backend, rngs=nnx.Rngs(0))  # fmt: skip
        return randomize(layer, scale=0.3)

    parallel, recurrent = build(form), build("scan")
    top = parallel.layers[0].forward_rnn if bidirectional else parallel.layers[0]
    assert top.backend == form
    x, lengths = inputs(), jnp.asarray(LENGTHS)
    first = jax.tree.map(lambda a: a + 0.1, recurrent.layers[0].forward_rnn.cell.initialize_carry((len(LENGTHS),))
                         if bidirectional else recurrent.layers[0].cell.initialize_carry((len(LENGTHS),)))  # fmt: skip
    carries = ((first, first) if bidirectional else first, None)

    def loss(layer, x, carries):
        outputs, finals = layer(x, lengths, initial_carries=carries)
        return jnp.sum(jnp.sin(outputs)) + sum(jnp.sum(jnp.tanh(leaf)) for leaf in jax.tree.leaves(finals))

    for got, want in zip(jax.tree.leaves(parallel(x, lengths, initial_carries=carries)),
                         jax.tree.leaves(recurrent(x, lengths, initial_carries=carries)), strict=True):  # fmt: skip
        assert_close(got, want)
    grad = nnx.grad(loss, argnums=(0, 1, 2))
    got, want = grad(parallel, x, carries), grad(recurrent, x, carries)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(got))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_close(a, b, 1e-4)


# ------------------------------------------------------------------------------------- long sequences


def naive_slstm(cell, x):
    """float64, no stabiliser: c_t = f c + exp(ĩ) z, n_t = f n + exp(ĩ), h = o c / n (the paper's eq. 8-13)."""
    W, R, b = (np.asarray(p[...], np.float64) for p in (cell.input_kernel, cell.recurrent_kernel, cell.bias))
    H = cell.hidden_features
    c, n, h, outputs = np.zeros(H), np.zeros(H), np.zeros(H), []
    for x_t in np.asarray(x, np.float64):
        raw = x_t @ W + np.concatenate([h @ R[0]]) + b  # one head
        i_raw, f_raw, z_raw, o_raw = np.split(raw, 4)
        f = 1.0 / (1.0 + np.exp(-f_raw))
        c, n = f * c + np.exp(i_raw) * np.tanh(z_raw), f * n + np.exp(i_raw)
        h = c / n / (1.0 + np.exp(-o_raw))
        outputs.append(h)
    return np.stack(outputs)


@pytest.mark.parametrize("name", ["slstm", "mlstm"])
def test_two_thousand_steps_with_huge_input_gates_stay_finite_and_exact(name):
    """An input gate of exp(60) overflows float32 after two steps without the stabiliser; with it the outputs
    stay finite, match a float64 computation without stabiliser (sLSTM) or the parallel form (mLSTM, with
    positive queries and keys so that the normaliser q.n stays away from 0), and the gradients stay finite."""
    time = 2000
    cell = randomize(lstm_jax.registry.CELLS[name](IN, HIDDEN if name == "mlstm" else 4, rngs=nnx.Rngs(0)), scale=0.3)
    bias = np.array(cell.bias[...])
    if name == "slstm":
        bias[:4] = 60.0  # the input-gate pre-activations
    else:
        cell.input_kernel[...] = cell.input_kernel[...] * 0.1
        bias[: 2 * HIDDEN] = 3.0  # q and k
        bias[-2 * cell.num_heads : -cell.num_heads] = 60.0  # the input gates
    cell.bias[...] = jnp.asarray(bias)
    x = jax.random.normal(jax.random.key(3), (1, time, IN))
    rnn = RNN(cell, backend="scan")
    outputs, _ = rnn(x)
    assert np.isfinite(np.asarray(outputs)).all()
    if name == "slstm":
        assert_close(outputs[0], naive_slstm(cell, x[0]), 1e-4)
    else:
        for form in ("parallel", "chunkwise"):  # chunkwise: 32 chunks of 64 steps, the last one padded
            assert_close(RNN(cell, backend=form)(x)[0], outputs, 1e-4)
    grads = nnx.grad(lambda rnn: jnp.sum(rnn(x)[0]))(rnn)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(grads))


def test_auto_runs_the_mlstm_chunkwise_and_the_slstm_recurrently():
    assert RNN(MLSTMCell(IN, HIDDEN, rngs=nnx.Rngs(0))).backend == "chunkwise"
    assert RNN(SLSTMCell(IN, HIDDEN, rngs=nnx.Rngs(0))).backend == "scan"


def test_what_the_xlstm_cells_refuse():
    with pytest.raises(ValueError, match="must divide into num_heads=3"):
        SLSTMCell(IN, HIDDEN, num_heads=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="forget_gate must be one of"):
        SLSTMCell(IN, HIDDEN, forget_gate="relu", rngs=nnx.Rngs(0))
    mlstm = MLSTMCell(IN, HIDDEN, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="recurrent dropout needs a recurrent matmul"):
        RNN(mlstm, recurrent_dropout_rate=0.1)
    with pytest.raises(ValueError, match="zoneout needs a cell with output"):
        RNN(SLSTMCell(IN, HIDDEN, rngs=nnx.Rngs(0)), zoneout_rate=0.1)
    with pytest.raises(ValueError, match="backend='parallel' needs a cell with a parallel form"):
        RNN(SLSTMCell(IN, HIDDEN, rngs=nnx.Rngs(0)), backend="parallel")


def test_slstm_exponential_forget_gate_matches_the_equations():
    import reference

    cell = randomize(SLSTMCell(IN, HIDDEN, num_heads=HEADS, forget_gate="exp", rngs=nnx.Rngs(0)), scale=0.3)
    x = inputs(batch=1)
    outputs, _ = RNN(cell)(x)
    want, _ = reference.run_sequence("slstm", cell, np.asarray(x[0]))
    assert_close(outputs[0], want)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_classifier_reads_the_mlstm_final_states_from_its_outputs(bidirectional):
    """The mLSTM's carry holds no h, so the classifier's "last" pooling reads the outputs; checked against the
    final hidden states of a cell that has them in its carry (zeros for the empty sequence)."""
    from lstm_jax.sentiment.model.classifier import _hidden, _last_outputs

    layer = lstm_jax.make_recurrent("lstm", IN, HIDDEN, bidirectional=bidirectional, rngs=nnx.Rngs(0))
    x, lengths = inputs(), jnp.asarray(LENGTHS)
    outputs, (top,) = layer(x, lengths)
    want = jnp.concatenate([_hidden(top[0]), _hidden(top[1])], -1) if bidirectional else _hidden(top)
    np.testing.assert_array_equal(_last_outputs(outputs, lengths, bidirectional), want)
