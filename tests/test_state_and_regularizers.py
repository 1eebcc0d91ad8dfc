"""State in and out (streaming), variational recurrent dropout and zoneout, each against a reference."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from flax import nnx
from test_cudnn import fake_gpu  # noqa: F401  (fixture)
from test_recurrent import IN, backends_to_test, randomize

import lstm_jax
from lstm_jax.recurrent import RNN, Bidirectional
from lstm_jax.registry import CELLS

HIDDEN, TIME = 4, 12
LENGTHS = np.array([TIME, 7, 3, 0, 11])
CHUNKS = [2, 5, 1, 4]  # uneven, summing to TIME


def inputs(batch=len(LENGTHS), time=TIME, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, time, IN))


def layer_for(name, backend="auto", **kwargs):
    if name.endswith("+proj"):
        kwargs["proj_size"] = 3
    layer = lstm_jax.make_recurrent(name.split("+")[0], IN, HIDDEN, num_layers=2, backend=backend, rngs=nnx.Rngs(0),
                                    **kwargs)  # fmt: skip
    return randomize(layer)


def stream(layer, x, lengths, chunks):
    """Feeds ``x`` chunk by chunk, each starting from the carries the previous chunk returned."""
    carries, outputs, start = None, [], 0
    for size in chunks:
        chunk_lengths = jnp.clip(lengths - start, 0, size)  # real tokens of each row inside this chunk
        chunk_outputs, carries = layer(x[:, start : start + size], chunk_lengths, initial_carries=carries)
        outputs.append(chunk_outputs)
        start += size
    return jnp.concatenate(outputs, axis=1), carries


@pytest.mark.parametrize(("name", "backend"), backends_to_test(["lstm", "gru", "layernorm_lstm", "lstm+proj",
                                                                   "simple_rnn"]))  # fmt: skip
def test_streaming_in_chunks_equals_the_whole_sequence(name, backend):
    layer = layer_for(name, backend)
    x, lengths = inputs(), jnp.asarray(LENGTHS)
    whole_outputs, whole_carries = layer(x, lengths)
    chunked_outputs, chunked_carries = stream(layer, x, lengths, CHUNKS)
    np.testing.assert_allclose(chunked_outputs, whole_outputs, atol=1e-5)
    assert jax.tree.structure(chunked_carries) == jax.tree.structure(whole_carries)
    for got, want in zip(jax.tree.leaves(chunked_carries), jax.tree.leaves(whole_carries)):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_streaming_on_the_cudnn_path(fake_gpu):  # noqa: F811
    layer = layer_for("lstm", "cudnn")
    x, lengths = inputs(), jnp.asarray(LENGTHS)
    whole = layer(x, lengths)
    chunked = stream(layer, x, lengths, CHUNKS)
    assert len(fake_gpu) == 1 + len(CHUNKS)
    for got, want in zip(jax.tree.leaves(chunked), jax.tree.leaves(whole)):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_bidirectional_takes_and_returns_a_carry_per_direction():
    forward = randomize(lstm_jax.LSTMCell(IN, HIDDEN, rngs=nnx.Rngs(1)), 1)
    backward = randomize(lstm_jax.LSTMCell(IN, HIDDEN, rngs=nnx.Rngs(2)), 2)
    x, lengths = inputs(), jnp.asarray(LENGTHS)
    start = jax.tree.map(lambda a: a + 0.5, forward.initialize_carry((len(LENGTHS),)))
    start_back = jax.tree.map(lambda a: a - 0.25, start)
    outputs, (f_carry, b_carry) = Bidirectional(RNN(forward), RNN(backward, reverse=True))(
        x, lengths, initial_carry=(start, start_back)
    )
    f_want = RNN(forward)(x, lengths, initial_carry=start)
    b_want = RNN(backward, reverse=True)(x, lengths, initial_carry=start_back)
    np.testing.assert_allclose(outputs, jnp.concatenate([f_want[0], b_want[0]], -1), atol=1e-6)
    for got, want in zip(jax.tree.leaves((f_carry, b_carry)), jax.tree.leaves((f_want[1], b_want[1]))):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_stacked_initial_carries_must_match_the_layers():
    with pytest.raises(ValueError, match="one carry per layer \\(2\\), got 1"):
        layer_for("gru")(inputs(), initial_carries=(None,))
    with pytest.raises(ValueError, match="one carry per layer \\(2\\), got ArrayImpl"):
        layer_for("gru")(inputs(), initial_carries=jnp.zeros((2, 8)))


@pytest.mark.parametrize("cell", ["lstm", "gru", "slstm", "mlstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_carry_of_the_wrong_structure_is_a_value_error_naming_the_expected_one(cell, bidirectional):
    from lstm_jax import make_recurrent

    layer = make_recurrent(cell, 4, 8, bidirectional=bidirectional, rngs=nnx.Rngs(0))
    x = jnp.zeros((3, 5, 4))
    good = layer.layers[0].forward_rnn.cell if bidirectional else layer.layers[0].cell
    right = good.initialize_carry((3,))
    for bad in (jnp.zeros((3, 7)), (jnp.zeros((3, 8)),) * 5, jax.tree.map(lambda leaf: leaf[:2], right)):
        carry = (bad, right) if bidirectional else bad
        with pytest.raises(ValueError, match="initial_carry must be shaped like .*Cell.initialize_carry"):
            layer(x, initial_carries=(carry,))
    if bidirectional:
        with pytest.raises(ValueError, match="must be \\(forward_carry, backward_carry\\)"):
            layer(x, initial_carries=(right,) if cell == "gru" else (jnp.zeros((3, 8)),))
    outputs, _ = layer(x, initial_carries=((right, right) if bidirectional else right,))  # the right one runs
    assert outputs.shape == (3, 5, 16 if bidirectional else 8)


# ------------------------------------------------------------------------------------ recurrent dropout


@pytest.mark.parametrize("name", ["lstm", "gru", "simple_rnn", "layernorm_lstm"])
def test_recurrent_dropout_is_one_mask_per_sequence_on_the_recurrent_input(name):
    """Batch of one: a training call equals the deterministic cell whose W_h rows are scaled by m / keep for
    exactly one binary mask m, the same at every step."""
    rate = 0.5
    cell = randomize(CELLS[name](IN, HIDDEN, rngs=nnx.Rngs(0)))
    x = inputs(batch=1)
    got, _ = RNN(cell, recurrent_dropout_rate=rate, backend="scan")(x, rngs=nnx.Rngs(dropout=3))
    matches = []
    for mask in itertools.product([0.0, 1.0], repeat=HIDDEN):
        masked = nnx.clone(cell)
        masked.recurrent_kernel[...] = cell.recurrent_kernel[...] * (np.array(mask) / (1 - rate))[:, None]
        want, _ = RNN(masked, backend="scan")(x)
        if np.allclose(got, want, atol=1e-5):
            matches.append(mask)
    assert len(matches) == 1, matches


@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_dropout_is_training_only_deterministic_and_leaves_padding_alone(bidirectional):
    plain = lstm_jax.make_recurrent("lstm", IN, HIDDEN, num_layers=2, bidirectional=bidirectional, rngs=nnx.Rngs(0))
    dropped = lstm_jax.make_recurrent("lstm", IN, HIDDEN, num_layers=2, bidirectional=bidirectional,
                                      recurrent_dropout_rate=0.3, rngs=nnx.Rngs(0))  # fmt: skip
    x, lengths = inputs(), jnp.asarray(LENGTHS)
    inference = dropped(x, lengths)
    for got, want in zip(jax.tree.leaves(inference), jax.tree.leaves(plain(x, lengths))):
        np.testing.assert_array_equal(got, want)  # no effect without a dropout stream
    first = dropped(x, lengths, rngs=nnx.Rngs(dropout=1))
    again = dropped(x, lengths, rngs=nnx.Rngs(dropout=1))
    other = dropped(x, lengths, rngs=nnx.Rngs(dropout=2))
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], other[0]) and not np.allclose(first[0], inference[0])
    padded = np.arange(TIME)[None, :] >= LENGTHS[:, None]
    assert np.all(np.asarray(first[0])[padded] == 0.0)
    empty = int(np.flatnonzero(LENGTHS == 0)[0])
    assert all(np.all(np.asarray(leaf)[empty] == 0.0) for leaf in jax.tree.leaves(first[1]))


def test_regularized_layers_train_under_jit_and_grad():
    layer = lstm_jax.make_recurrent("lstm", IN, HIDDEN, num_layers=2, bidirectional=True, recurrent_dropout_rate=0.2,
                                    zoneout_rate=0.1, rngs=nnx.Rngs(0))  # fmt: skip
    x, lengths = inputs(), jnp.asarray(LENGTHS)

    @nnx.jit
    def grads(layer, key):
        return nnx.grad(lambda m: jnp.sum(m(x, lengths, rngs=nnx.Rngs(dropout=key))[0] ** 2))(layer)

    first, second = grads(layer, jax.random.key(0)), grads(layer, jax.random.key(1))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves((first, second)))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)))
    assert all(rnn.backend == "scan" for _, rnn in nnx.iter_modules(layer) if isinstance(rnn, RNN))


# ------------------------------------------------------------------------------------------- zoneout


def zoneout_expectation(name, cell, x, rate, reverse=False):
    """NumPy, Krueger et al. 2016 at test time: s_t = p s_{t-1} + (1 - p) f(s_{t-1}, x_t) for every state part."""
    p, step = reference.params(cell), reference.STEPS[name]
    state, outputs = reference.initial_state(name, cell), []
    for t in range(len(x) - 1, -1, -1) if reverse else range(len(x)):
        new, _ = step(p, state, np.asarray(x[t], np.float64))
        state = jax.tree.map(lambda old, fresh: rate * old + (1 - rate) * fresh, state, new)
        outputs.append(state[1] if name in reference.LSTM_LIKE else state)
    return np.stack(outputs[::-1] if reverse else outputs) if outputs else np.zeros((0, HIDDEN)), state


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", ["lstm", "gru", "peephole_lstm"])
def test_zoneout_at_inference_is_the_expectation(name, reverse):
    cell = randomize(CELLS[name](IN, HIDDEN, rngs=nnx.Rngs(0)))
    x, lengths = inputs(), jnp.asarray(LENGTHS)
    outputs, carry = RNN(cell, zoneout_rate=0.3, reverse=reverse)(x, lengths)
    for b, length in enumerate(LENGTHS):
        want, state = zoneout_expectation(name, cell, np.asarray(x[b, :length]), 0.3, reverse)
        np.testing.assert_allclose(outputs[b, :length], want, atol=1e-5)
        np.testing.assert_array_equal(outputs[b, length:], 0.0)
        jax.tree.map(lambda got, expected: np.testing.assert_allclose(got[b], expected, atol=1e-5), carry, state)


def test_zoneout_in_training_keeps_or_updates_each_unit():
    """GRU (its carry is its output): every unit at every real step is either its previous value or the cell's
    fresh update from the previous (zoned) state; about ``rate`` of them keep."""
    rate = 0.4
    cell = randomize(CELLS["gru"](IN, HIDDEN, rngs=nnx.Rngs(0)))
    lengths = jnp.asarray(np.tile(LENGTHS, 4))
    x = inputs(batch=len(lengths))
    outputs, carry = RNN(cell, zoneout_rate=rate)(x, lengths, rngs=nnx.Rngs(dropout=5))
    outputs = np.asarray(outputs)
    kept = total = 0
    for t in range(TIME):
        previous = outputs[:, t - 1] if t else np.zeros_like(outputs[:, 0])
        fresh, _ = cell(jnp.asarray(previous), x[:, t])
        real = np.asarray(lengths) > t
        is_kept = np.isclose(outputs[:, t], previous, atol=1e-6)
        is_fresh = np.isclose(outputs[:, t], np.asarray(fresh), atol=1e-5)
        assert np.all((is_kept | is_fresh)[real])
        assert np.all(outputs[~real, t] == 0.0)
        kept, total = kept + (is_kept & ~is_fresh)[real].sum(), total + (~(is_kept & is_fresh))[real].sum()
    assert 0.3 < kept / total < 0.5
    last = np.asarray(lengths) - 1
    rows = np.flatnonzero(last >= 0)
    np.testing.assert_allclose(np.asarray(carry)[rows], outputs[rows, last[rows]], atol=1e-6)  # frozen past length
    again, _ = RNN(cell, zoneout_rate=rate)(x, lengths, rngs=nnx.Rngs(dropout=5))
    np.testing.assert_array_equal(again, outputs)


def test_zoneout_changes_the_function_so_fused_and_cudnn_refuse_it():
    cell = lstm_jax.LSTMCell(IN, HIDDEN, rngs=nnx.Rngs(0))
    assert RNN(cell, zoneout_rate=0.1).backend == "scan"
    with pytest.raises(ValueError, match="backend='fused' cannot apply zoneout"):
        RNN(cell, zoneout_rate=0.1, backend="fused")
    with pytest.raises(ValueError, match="zoneout_rate must be in"):
        RNN(cell, zoneout_rate=1.0)
