"""Cells against the NumPy reference, and the exact variable-length semantics of the sequence layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from flax import nnx

import lstm_jax
from lstm_jax import native
from lstm_jax.recurrent import RNN, Bidirectional, choose_backend, reverse_padded
from lstm_jax.registry import CELLS

CELL_NAMES = sorted(CELLS)
# The LSTM cells again as projection LSTMs (LSTMP): h has PROJ < HIDDEN features.
CELL_VARIANTS = CELL_NAMES + [f"{name}+proj" for name in reference.LSTM_LIKE]
IN, HIDDEN, TIME, PROJ = 3, 4, 6, 2
LENGTHS = np.array([TIME, 1, 3, 0, 5])  # full length, 1, middle, empty, almost full


def randomize(module, seed=0, scale=0.5):
    """Gives every parameter (peepholes and biases included) random non-zero values."""
    state = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    nnx.update(module, jax.tree.unflatten(treedef, new))
    return module


def base(name):
    """The cell name without the variant ('lstm+proj' -> 'lstm')."""
    return name.split("+")[0]


def make_cell(name, seed=0, **kwargs):
    if name.endswith("+proj"):
        kwargs["proj_size"] = PROJ
    return randomize(CELLS[base(name)](IN, HIDDEN, rngs=nnx.Rngs(seed), **kwargs), seed)


def inputs(batch=len(LENGTHS), time=TIME, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, time, IN))


def hidden_of(name, state):
    if base(name) == "slstm":
        return state[3]
    if base(name) == "mlstm":
        return state[0]  # the matrix memory (its output is not part of the state)
    return state[1] if base(name) in reference.LSTM_LIKE else state


@pytest.mark.parametrize("name", CELL_VARIANTS)
def test_cell_step_matches_equations(name):
    cell = make_cell(name)
    x = np.asarray(inputs()[:, 0])
    carry = jax.tree.map(lambda a: a + 0.3, cell.initialize_carry((x.shape[0],)))  # non-zero state
    new_carry, y = cell(carry, jnp.asarray(x))
    assert y.shape == (x.shape[0], PROJ if name.endswith("+proj") else HIDDEN)
    p, step = reference.params(cell), reference.STEPS[base(name)]
    for b in range(x.shape[0]):
        state_b = jax.tree.map(lambda a: np.asarray(a[b], np.float64), carry)
        expected_state, expected_y = step(p, state_b, x[b].astype(np.float64))
        np.testing.assert_allclose(y[b], expected_y, atol=1e-5)
        jax.tree.map(lambda got, want: np.testing.assert_allclose(got[b], want, atol=1e-5), new_carry, expected_state)


def test_lstm_forget_bias_default_and_configurable():
    default = lstm_jax.LSTMCell(IN, HIDDEN, rngs=nnx.Rngs(0)).bias[...]
    np.testing.assert_array_equal(default[HIDDEN : 2 * HIDDEN], 1.0)
    np.testing.assert_array_equal(np.delete(np.asarray(default), np.s_[HIDDEN : 2 * HIDDEN]), 0.0)
    custom = lstm_jax.LSTMCell(IN, HIDDEN, forget_bias=0.0, rngs=nnx.Rngs(0)).bias[...]
    np.testing.assert_array_equal(custom, 0.0)


def test_untrained_peephole_cell_equals_lstm():
    """Zero-initialised peepholes make the peephole cell a plain LSTM until it trains."""
    lstm = lstm_jax.LSTMCell(IN, HIDDEN, rngs=nnx.Rngs(3))
    peephole = lstm_jax.PeepholeLSTMCell(IN, HIDDEN, rngs=nnx.Rngs(3))
    x, carry = inputs()[:, 0], lstm.initialize_carry((len(LENGTHS),))
    np.testing.assert_array_equal(lstm(carry, x)[1], peephole(carry, x)[1])


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", CELL_VARIANTS)
def test_padded_batch_equals_each_sequence_alone(name, reverse):
    cell = make_cell(name)
    rnn = RNN(cell, reverse=reverse)
    x = inputs()
    outputs, carry = rnn(x, jnp.asarray(LENGTHS))
    for b, length in enumerate(LENGTHS):
        want_outputs, want_state = reference.run_sequence(base(name), cell, np.asarray(x[b, :length]), reverse)
        np.testing.assert_allclose(outputs[b, :length], want_outputs, atol=1e-5)
        np.testing.assert_array_equal(outputs[b, length:], 0.0)  # padded outputs exactly zero
        jax.tree.map(lambda got, want: np.testing.assert_allclose(got[b], want, atol=1e-5), carry, want_state)
        if length:  # the layer itself on the unpadded sequence, without lengths
            alone_outputs, alone_carry = rnn(x[b : b + 1, :length])
            np.testing.assert_allclose(outputs[b, :length], alone_outputs[0], atol=1e-6)
            np.testing.assert_allclose(hidden_of(name, carry)[b], hidden_of(name, alone_carry)[0], atol=1e-6)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_padding_content_and_amount_change_nothing(name):
    rnn = RNN(make_cell(name), reverse=True)
    lengths = jnp.asarray(LENGTHS)
    x = inputs()
    outputs, carry = rnn(x, lengths)
    # More padding, filled with garbage rather than zeros.
    garbage = 100.0 * jax.random.normal(jax.random.key(9), (len(LENGTHS), TIME + 4, IN))
    steps = jnp.arange(TIME + 4)[None, :, None]
    padded = jnp.where(steps < lengths[:, None, None], jnp.pad(x, ((0, 0), (0, 4), (0, 0))), garbage)
    padded_outputs, padded_carry = rnn(padded, lengths)
    np.testing.assert_allclose(padded_outputs[:, :TIME], outputs, atol=1e-6)
    np.testing.assert_array_equal(padded_outputs[:, TIME:], 0.0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), padded_carry, carry)


def test_length_zero_keeps_the_initial_carry():
    cell = make_cell("lstm")
    initial = jax.tree.map(lambda a: a + 0.7, cell.initialize_carry((len(LENGTHS),)))
    outputs, carry = RNN(cell)(inputs(), jnp.asarray(LENGTHS), initial_carry=initial)
    empty = int(np.flatnonzero(LENGTHS == 0)[0])
    np.testing.assert_array_equal(outputs[empty], 0.0)
    jax.tree.map(lambda a: np.testing.assert_array_equal(a[empty], np.float32(0.7)), carry)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_scan_equals_python_loop_and_every_unroll(name):
    cell = make_cell(name)
    x, lengths = inputs(), jnp.asarray(LENGTHS)
    want_outputs, want_carry = RNN(cell, reverse=True, backend="python")(x, lengths)
    for unroll in [1, 2, 3, 4, 8, True]:
        outputs, carry = RNN(cell, reverse=True, unroll=unroll)(x, lengths)
        np.testing.assert_allclose(outputs, want_outputs, atol=1e-6, err_msg=f"unroll={unroll}")
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), carry, want_carry)


def test_time_major_matches_batch_major():
    cell = make_cell("gru")
    x, lengths = inputs(), jnp.asarray(LENGTHS)
    batch_major, _ = RNN(cell)(x, lengths)
    time_major, _ = RNN(cell, time_major=True)(jnp.swapaxes(x, 0, 1), lengths)
    np.testing.assert_allclose(jnp.swapaxes(time_major, 0, 1), batch_major, atol=1e-6)


def test_reverse_padded_is_an_involution_that_keeps_padding():
    seq = jnp.arange(TIME)[:, None] * jnp.ones((1, 3), jnp.int32)  # [T, B]
    lengths = jnp.array([TIME, 2, 0])
    flipped = reverse_padded(seq, lengths)
    np.testing.assert_array_equal(flipped[:, 0], np.arange(TIME)[::-1])
    np.testing.assert_array_equal(flipped[:, 1], [1, 0, 2, 3, 4, 5])
    np.testing.assert_array_equal(flipped[:, 2], np.arange(TIME))
    np.testing.assert_array_equal(reverse_padded(flipped, lengths), seq)


@pytest.mark.parametrize("name", CELL_VARIANTS)
def test_bidirectional_concatenates_forward_and_reverse(name):
    forward, backward = make_cell(name, seed=1), make_cell(name, seed=2)
    bi = Bidirectional(RNN(forward), RNN(backward, reverse=True))
    x = inputs()
    outputs, (forward_carry, backward_carry) = bi(x, jnp.asarray(LENGTHS))
    assert outputs.shape == (len(LENGTHS), TIME, 2 * forward.output_features)
    for b, length in enumerate(LENGTHS):
        f_out, f_state = reference.run_sequence(base(name), forward, np.asarray(x[b, :length]))
        b_out, b_state = reference.run_sequence(base(name), backward, np.asarray(x[b, :length]), reverse=True)
        np.testing.assert_allclose(outputs[b, :length], np.concatenate([f_out, b_out], -1), atol=1e-5)
        np.testing.assert_array_equal(outputs[b, length:], 0.0)
        np.testing.assert_allclose(hidden_of(name, backward_carry)[b], hidden_of(name, b_state), atol=1e-5)
        np.testing.assert_allclose(hidden_of(name, forward_carry)[b], hidden_of(name, f_state), atol=1e-5)


def test_bidirectional_rejects_two_forward_rnns():
    cell = make_cell("lstm")
    with pytest.raises(ValueError, match="reverse=True"):
        Bidirectional(RNN(cell), RNN(cell))


def test_stacked_dropout_only_with_rngs_and_padding_stays_zero():
    layer = lstm_jax.make_recurrent(
        "lstm", IN, HIDDEN, num_layers=3, bidirectional=True, dropout_rate=0.5, rngs=nnx.Rngs(0)
    )
    x, lengths = inputs(), jnp.asarray(LENGTHS)
    eval_a, carries = layer(x, lengths)
    eval_b, _ = layer(x, lengths)
    np.testing.assert_array_equal(eval_a, eval_b)
    assert len(carries) == 3
    train_a, _ = layer(x, lengths, rngs=nnx.Rngs(dropout=1))
    train_b, _ = layer(x, lengths, rngs=nnx.Rngs(dropout=2))
    assert not np.allclose(train_a, eval_a) and not np.allclose(train_a, train_b)
    for out in (eval_a, train_a):
        for b, length in enumerate(LENGTHS):
            np.testing.assert_array_equal(out[b, length:], 0.0)


def test_stacked_layers_feed_each_other():
    layer = randomize(lstm_jax.make_recurrent("gru", IN, HIDDEN, num_layers=2, rngs=nnx.Rngs(0)))
    x, lengths = inputs(), jnp.asarray(LENGTHS)
    first, _ = layer.layers[0](x, lengths)
    want, _ = layer.layers[1](first, lengths)
    got, _ = layer(x, lengths)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\[batch, time, features\]"):
        RNN(make_cell("lstm"))(jnp.zeros((TIME, IN)))
    with pytest.raises(ValueError, match="unknown cell"):
        lstm_jax.make_recurrent("transformer", IN, HIDDEN, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="backend must be one of"):
        RNN(make_cell("lstm"), backend="while")
    with pytest.raises(ValueError, match="backend='fused' runs plain LSTMCell only, not GRUCell"):
        RNN(make_cell("gru"), backend="fused")


def loss_fn(layer, x, lengths):
    outputs, carries = layer(x, lengths)
    return jnp.sum(jnp.sin(outputs)) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(carries))


@pytest.mark.parametrize("name", CELL_VARIANTS)
def test_gradients_reach_every_parameter_and_match_finite_differences(name):
    kwargs = {"proj_size": PROJ} if name.endswith("+proj") else {}
    layer = lstm_jax.make_recurrent(base(name), IN, HIDDEN, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0),
                                    **kwargs)  # fmt: skip
    layer = randomize(layer)
    x, lengths = inputs(), jnp.asarray(LENGTHS)
    grads = nnx.grad(loss_fn)(layer, x, lengths)
    for path, g in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grads)):
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"
    # Directional finite difference along a random direction in parameter space (float32: loose tolerance).
    graphdef, params = nnx.split(layer)
    direction = jax.tree.map(lambda p: jax.random.normal(jax.random.key(5), p.shape), params)

    def loss_at(eps):
        moved = jax.tree.map(lambda p, d: p + eps * d, params, direction)
        return loss_fn(nnx.merge(graphdef, moved), x, lengths)

    eps = 1e-3 if base(name) in ("slstm", "mlstm") else 1e-2  # exponential gates curve faster
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2)


def test_jit_and_no_recompilation_across_batches():
    layer = randomize(lstm_jax.make_recurrent("lstm", IN, HIDDEN, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(layer)
    traces = []

    @jax.jit
    def forward(params, x, lengths):
        traces.append(1)
        return nnx.merge(graphdef, params)(x, lengths)[0]

    eager, _ = layer(inputs(), jnp.asarray(LENGTHS))
    np.testing.assert_allclose(forward(params, inputs(), jnp.asarray(LENGTHS)), eager, atol=1e-6)
    for seed in range(3):
        forward(params, inputs(seed=seed), jnp.asarray(np.roll(LENGTHS, seed)))
    assert len(traces) == 1


def test_vmap_over_an_extra_batch_axis():
    rnn = RNN(make_cell("gru"))
    x = jax.random.normal(jax.random.key(2), (2, len(LENGTHS), TIME, IN))
    lengths = jnp.stack([jnp.asarray(LENGTHS), jnp.asarray(np.roll(LENGTHS, 1))])
    outputs, _ = jax.vmap(lambda a, l: rnn(a, l))(x, lengths)
    for k in range(2):
        np.testing.assert_allclose(outputs[k], rnn(x[k], lengths[k])[0], atol=1e-6)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_bfloat16_compute_keeps_float32_params(name):
    cell32 = make_cell(name)
    cell16 = make_cell(name, dtype=jnp.bfloat16)
    for leaf in jax.tree.leaves(nnx.state(cell16, nnx.Param)):
        assert leaf.dtype == jnp.float32
    x, lengths = inputs(), jnp.asarray(LENGTHS)
    out32, _ = RNN(cell32)(x, lengths)
    out16, carry16 = RNN(cell16)(x.astype(jnp.bfloat16), lengths)
    assert out16.dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(carry16))
    np.testing.assert_allclose(out16.astype(jnp.float32), out32, atol=5e-2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_lstm_equals_autodiff_scan_in_value_and_gradient(reverse, dtype):
    cell = make_cell("lstm", dtype=dtype)
    fused, generic = RNN(cell, reverse=reverse, backend="fused"), RNN(cell, reverse=reverse, backend="scan")
    x, lengths = inputs(), jnp.asarray(LENGTHS)
    initial = jax.tree.map(lambda a: a + 0.2, cell.initialize_carry((len(LENGTHS),)))

    def loss(rnn, x, initial):
        outputs, (c, h) = rnn(x, lengths, initial_carry=initial)
        return jnp.sum(jnp.sin(outputs.astype(jnp.float32))) + jnp.sum(c**2) + jnp.sum(jnp.cos(h))

    tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(loss(fused, x, initial), loss(generic, x, initial), rtol=tolerance)
    grad = nnx.grad(loss, argnums=(0, 1, 2))
    for got, want in zip(jax.tree.leaves(grad(fused, x, initial)), jax.tree.leaves(grad(generic, x, initial))):
        np.testing.assert_allclose(got, want, atol=tolerance * 10, rtol=tolerance)


def backends_to_test(names) -> list[tuple[str, str]]:
    """(cell, backend) pairs: "scan" for every cell, and "auto" too where it picks another recurrence on this
    machine (the fused LSTM, the chunkwise mLSTM); elsewhere "auto" would run the very same scan again."""
    return [(name, backend) for name in names for backend in ("auto", "scan")
            if backend == "scan" or choose_backend("auto", make_cell(name)) != "scan"]  # fmt: skip


def test_backends_to_test_keeps_auto_where_it_differs_from_scan():
    pairs = backends_to_test(CELL_VARIANTS)
    native_cells = {"gru"} if native.unavailable_reason() is None else set()  # lstm runs fused without it
    assert {name for name, backend in pairs if backend == "auto"} == {"lstm", "mlstm"} | native_cells  # on a CPU
    assert sorted(name for name, backend in pairs if backend == "scan") == sorted(CELL_VARIANTS)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("name", "backend"), backends_to_test(CELL_VARIANTS))
def test_padding_never_reaches_values_or_gradients_even_when_it_is_nan(name, backend, reverse):
    cell = make_cell(name)
    rnn = RNN(cell, reverse=reverse, backend=backend)
    lengths = jnp.asarray(LENGTHS)
    clean = inputs()
    padded = jnp.arange(TIME)[None, :, None] >= lengths[:, None, None]
    poisoned = jnp.where(padded, jnp.where(jnp.arange(IN) % 2 == 0, jnp.nan, jnp.inf), clean)

    def loss(rnn, x):
        outputs, carry = rnn(x, lengths)
        return jnp.sum(jnp.sin(outputs)) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))

    np.testing.assert_array_equal(loss(rnn, poisoned), loss(rnn, clean))
    grad = nnx.grad(loss, argnums=(0, 1))
    (want_params, want_x), (got_params, got_x) = grad(rnn, clean), grad(rnn, poisoned)
    for want, got in zip(jax.tree.leaves(want_params), jax.tree.leaves(got_params)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(jnp.where(padded, 0.0, got_x), got_x)  # no gradient flows into padding
    np.testing.assert_array_equal(got_x, jnp.where(padded, 0.0, want_x))


def test_a_wrong_feature_width_is_a_clear_error():
    with pytest.raises(ValueError, match=f"inputs have {IN + 1} features, the cell expects {IN}"):
        RNN(make_cell("lstm"))(jnp.zeros((2, 3, IN + 1)))


@pytest.mark.parametrize("name", CELL_NAMES)
@pytest.mark.parametrize("shape", [(3, 0, IN), (0, 5, IN)], ids=["no time steps", "empty batch"])
def test_an_empty_batch_or_no_time_steps_give_empty_outputs_and_the_initial_carry(name, shape):
    heads = {"num_heads": 2} if name in ("slstm", "mlstm") else {}
    layer = lstm_jax.make_recurrent(name, IN, HIDDEN, rngs=nnx.Rngs(0), **heads)
    outputs, (carry,) = layer(jnp.zeros(shape), jnp.zeros(shape[0], jnp.int32))
    assert outputs.shape == (*shape[:2], HIDDEN)
    initial = layer.layers[0].cell.initialize_carry((shape[0],))
    assert jax.tree.all(jax.tree.map(lambda a, b: a.shape == b.shape and bool(jnp.all(a == b)), carry, initial))


def test_bad_sizes_and_rates_are_value_errors_naming_the_argument():
    for name in ("lstm", "gru", "slstm", "mlstm"):
        with pytest.raises(ValueError, match="hidden_features must be a positive integer, got 0"):
            lstm_jax.make_recurrent(name, IN, 0, rngs=nnx.Rngs(0))
    for rate in (1.5, -0.5):
        with pytest.raises(ValueError, match="dropout_rate must be in"):
            lstm_jax.make_recurrent("lstm", IN, HIDDEN, num_layers=2, dropout_rate=rate, rngs=nnx.Rngs(0))


def test_lengths_beyond_int32_are_clipped_not_wrapped():
    layer = lstm_jax.make_recurrent("lstm", IN, HIDDEN, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 5, IN))
    huge, _ = layer(x, np.array([2**31 + 2, 3], np.int64))  # int32 would wrap 2**31 + 2 to a negative length
    full, _ = layer(x, np.array([5, 3]))
    np.testing.assert_array_equal(np.asarray(huge), np.asarray(full))
