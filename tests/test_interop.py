"""Parity with torch.nn.LSTM/GRU/RNN (packed sequences) and Keras 3 LSTM/GRU through the importers."""

import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.interop import ConversionError, from_keras, from_torch

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

IN, HIDDEN, TIME = 3, 5, 7
LENGTHS = [7, 1, 4, 6]

TORCH_CASES = [
    # (class, num_layers, bidirectional, batch_first, bias[, proj_size])
    ("LSTM", 1, False, True, True),
    ("LSTM", 1, False, True, True, 2),
    ("LSTM", 2, True, False, True, 3),
    ("LSTM", 3, True, True, False, 4),
    ("LSTM", 2, True, False, True),
    ("LSTM", 3, False, True, False),
    ("LSTM", 2, True, True, False),
    ("GRU", 1, False, False, True),
    ("GRU", 2, True, True, True),
    ("GRU", 2, False, True, False),
    ("RNN", 2, True, True, True),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda case: "-".join(map(str, case)))
def test_from_torch_matches_packed_sequences(case):
    kind, num_layers, bidirectional, batch_first, bias, *projection = case
    torch.manual_seed(0)
    extra = {"proj_size": projection[0]} if projection else {}
    module = getattr(torch.nn, kind)(
        IN, HIDDEN, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias, **extra
    ).eval()
    x = torch.randn(len(LENGTHS), TIME, IN)
    lengths = torch.tensor(LENGTHS)
    x_in = x if batch_first else x.transpose(0, 1)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x_in, lengths, batch_first=batch_first, enforce_sorted=False)
    with torch.no_grad():
        packed_out, final = module(packed)
    want, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=batch_first, total_length=TIME)

    layer = from_torch(module)
    got, carries = layer(jnp.asarray(x_in.numpy()), lengths=jnp.asarray(LENGTHS))
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-5)

    # Final states: torch stacks [layer * direction, batch, hidden].
    h_n, c_n = final if kind == "LSTM" else (final, None)
    directions = 2 if bidirectional else 1
    for index, carry in enumerate(carries):
        per_direction = carry if bidirectional else (carry,)
        for d, state in enumerate(per_direction):
            row = index * directions + d
            c, h = state if kind == "LSTM" else (None, state)
            np.testing.assert_allclose(np.asarray(h), h_n[row].numpy(), atol=1e-5)
            if c is not None:
                np.testing.assert_allclose(np.asarray(c), c_n[row].numpy(), atol=1e-5)


@pytest.mark.parametrize("weight", ["weight_hh_l0", "weight_ih_l1_reverse"])
def test_from_torch_converts_weight_normed_modules_as_they_compute(weight):
    torch.manual_seed(0)
    module = torch.nn.utils.parametrizations.weight_norm(
        torch.nn.LSTM(IN, HIDDEN, num_layers=2, bidirectional=True, batch_first=True), name=weight
    ).eval()  # named_parameters() now lists parametrizations.<weight>.original0/1, not <weight>
    x = torch.randn(len(LENGTHS), TIME, IN)
    with torch.no_grad():
        want, _ = module(x)
    got, _ = from_torch(module)(jnp.asarray(x.numpy()))
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-5)


def test_from_torch_refuses_what_it_cannot_convert():
    with pytest.raises(ConversionError, match="nonlinearity='relu'"):
        from_torch(torch.nn.RNN(IN, HIDDEN, nonlinearity="relu"))
    with pytest.raises(ConversionError, match="Linear"):
        from_torch(torch.nn.Linear(IN, HIDDEN))


def _keras_inputs():
    return np.random.default_rng(0).normal(size=(len(LENGTHS), TIME, IN)).astype(np.float32)


def _randomize_keras(layer):
    rng = np.random.default_rng(1)
    layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in layer.get_weights()])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_from_keras_matches_keras(kind, go_backwards):
    layer = getattr(keras.layers, kind)(HIDDEN, return_sequences=True, return_state=True, go_backwards=go_backwards)
    x = _keras_inputs()
    layer(x)
    _randomize_keras(layer)
    want_outputs, *want_states = layer(x)
    want_outputs = np.asarray(want_outputs)
    if go_backwards:  # Keras returns backward outputs in processing order; ours are in time order
        want_outputs = want_outputs[:, ::-1]
    got, (carry,) = from_keras(layer)(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), want_outputs, atol=1e-5)
    h = carry[1] if kind == "LSTM" else carry
    np.testing.assert_allclose(np.asarray(h), np.asarray(want_states[0]), atol=1e-5)
    if kind == "LSTM":
        np.testing.assert_allclose(np.asarray(carry[0]), np.asarray(want_states[1]), atol=1e-5)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_from_keras_bidirectional_and_masked_lengths(kind):
    layer = keras.layers.Bidirectional(getattr(keras.layers, kind)(HIDDEN, return_sequences=True))
    x = _keras_inputs()
    mask = np.arange(TIME)[None, :] < np.array(LENGTHS)[:, None]
    layer(x, mask=mask)
    _randomize_keras(layer)
    want = np.asarray(layer(x, mask=mask))
    got, _ = from_keras(layer)(jnp.asarray(x), jnp.asarray(LENGTHS))
    # Keras carries the last output through masked steps; lstm_jax zeros them. Real tokens must agree.
    for b, length in enumerate(LENGTHS):
        np.testing.assert_allclose(np.asarray(got[b, :length]), want[b, :length], atol=1e-5)
        np.testing.assert_array_equal(np.asarray(got[b, length:]), 0.0)


def test_from_keras_refuses_what_it_cannot_convert():
    x = _keras_inputs()
    relu = keras.layers.LSTM(HIDDEN, activation="relu")
    relu(x)
    with pytest.raises(ConversionError, match="activation='relu'"):
        from_keras(relu)
    gru = keras.layers.GRU(HIDDEN, reset_after=False)
    gru(x)
    with pytest.raises(ConversionError, match="reset_after=False"):
        from_keras(gru)
    with pytest.raises(ConversionError, match="not built"):
        from_keras(keras.layers.LSTM(HIDDEN))
    summed = keras.layers.Bidirectional(keras.layers.LSTM(HIDDEN), merge_mode="sum")
    summed(x)
    with pytest.raises(ConversionError, match="merge_mode='sum'"):
        from_keras(summed)
    with pytest.raises(ConversionError, match="Dense"):
        from_keras(keras.layers.Dense(3))
