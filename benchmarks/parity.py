"""Prints the largest absolute difference between lstm_jax and PyTorch / Keras on the same weights, and between
lstm_jax's xLSTM cells and the reference xLSTM code (the ``xlstm`` package's vanilla sLSTM, ``mlstm_kernels``'
native PyTorch mLSTM kernels; both in the dev extra).

python benchmarks/parity.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from lstm_jax.interop import from_keras, from_torch  # noqa: E402
from lstm_jax.recurrent import RNN  # noqa: E402
from lstm_jax.xlstm import MLSTMCell, SLSTMCell  # noqa: E402

IN, HIDDEN, TIME, LENGTHS = 16, 32, 50, [50, 1, 17, 33, 49, 2, 50, 8]


def torch_error(kind, num_layers, bidirectional, proj_size=0):
    torch.manual_seed(0)
    extra = {"proj_size": proj_size} if proj_size else {}
    module = getattr(torch.nn, kind)(IN, HIDDEN, num_layers=num_layers, bidirectional=bidirectional, batch_first=True,
                                     **extra)  # fmt: skip
    x = torch.randn(len(LENGTHS), TIME, IN)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        out, _ = module(packed)
    want, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=TIME)
    got, _ = from_torch(module)(jnp.asarray(x.numpy()), lengths=jnp.asarray(LENGTHS))
    return float(np.max(np.abs(np.asarray(got) - want.numpy())))


def keras_error(kind, bidirectional):
    layer = getattr(keras.layers, kind)(HIDDEN, return_sequences=True)
    layer = keras.layers.Bidirectional(layer) if bidirectional else layer
    x = np.random.default_rng(0).normal(size=(len(LENGTHS), TIME, IN)).astype(np.float32)
    want = np.asarray(layer(x))
    got, _ = from_keras(layer)(jnp.asarray(x))
    return float(np.max(np.abs(np.asarray(got) - want)))


# ------------------------------------------------------------------------------------------ xLSTM


def slstm_reference(cell, x):
    """The xlstm package's vanilla sLSTM on an unpadded batch ``x <[B, T, in]>``: outputs, [h, c, n, m]."""
    from xlstm.blocks.slstm.src.vanilla import slstm_forward, slstm_pointwise_function_registry

    wx = torch.tensor(np.asarray(x @ cell.input_kernel[...])).transpose(0, 1)  # [T, B, 4H]
    recurrent = torch.tensor(np.asarray(cell.recurrent_kernel[...])).transpose(1, 2)  # [heads, 4 head, head]
    bias = torch.tensor(np.asarray(cell.bias[...]))
    states = torch.zeros(4, x.shape[0], cell.hidden_features)
    states_all, last, _ = slstm_forward(wx, states, recurrent, bias, slstm_pointwise_function_registry["slstm"])
    return states_all[0, 1:].transpose(0, 1).numpy(), [s.numpy() for s in last]


def _mlstm_inputs(cell, x):
    """q, k, v, i, f as mlstm_kernels takes them (``[B, heads, T, ...]``, q unscaled) and our output gate."""
    q, k, v, o, i, f = cell._split(cell.input_projection(x))  # our q carries the 1/sqrt(Dk) scale

    def heads_first(a):
        return torch.tensor(np.asarray(jnp.moveaxis(a, 1, 2) if a.ndim == 4 else jnp.swapaxes(a, 1, 2)))

    return [heads_first(a) for a in (q * np.sqrt(cell.key_size), k, v, i, f)], np.asarray(jax.nn.sigmoid(o))


def mlstm_reference(cell, x, form="recurrent"):
    """mlstm_kernels' native recurrent (final states too) or parallel mLSTM on ``x <[B, T, in]>`` with our
    projections, times our output gate: outputs <[B, T, H]>, [C, n, m] (recurrent) or None (parallel)."""
    from mlstm_kernels.torch.parallel.native.fw import mlstm_parallel_fw
    from mlstm_kernels.torch.recurrent.native_sequence import mlstm_recurrent_sequence__native_fw

    (q, k, v, i, f), gate = _mlstm_inputs(cell, x)
    if form == "recurrent":
        h, states = mlstm_recurrent_sequence__native_fw(q, k, v, i, f, return_last_states=True)
        states = [s.numpy() for s in states]
    else:
        h, states = mlstm_parallel_fw(q, k, v, i, f)[0], None
    outputs = gate * np.moveaxis(h.numpy(), 1, 2)  # [B, T, heads, Dv]
    return outputs.reshape(*x.shape[:2], cell.hidden_features), states


def randomized(cell, scale=0.3):
    state = nnx.state(cell, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    nnx.update(cell, jax.tree.unflatten(treedef, [scale * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)]))
    return cell


def xlstm_errors():
    """(row label, max abs error, max error relative to the largest value of each compared quantity) for each
    xLSTM comparison, over the padded batch of LENGTHS."""
    x = jax.random.normal(jax.random.key(1), (len(LENGTHS), TIME, IN))
    lengths = jnp.asarray(LENGTHS)
    slstm = randomized(SLSTMCell(IN, HIDDEN, num_heads=4, rngs=nnx.Rngs(0)))
    mlstm = randomized(MLSTMCell(IN, HIDDEN, num_heads=4, rngs=nnx.Rngs(0)))
    labels = ["sLSTM (4 heads) vs xlstm vanilla sLSTM: outputs, final c, n, m, h",
              "mLSTM (4 heads), recurrent form vs mlstm_kernels native recurrent: outputs, final C, n, m",
              "mLSTM (4 heads), parallel form vs our recurrent form: outputs, final C, n, m",
              "mLSTM (4 heads), parallel form (no initial state) vs mlstm_kernels native parallel"]  # fmt: skip
    pairs = {label: [] for label in labels}  # (got, want) arrays
    s_out, s_carry = RNN(slstm)(x, lengths)
    m_out, m_carry = RNN(mlstm, backend="scan")(x, lengths)
    p_out, p_carry = RNN(mlstm, backend="parallel")(x, lengths)
    for b, length in enumerate(LENGTHS):
        want, (h, c, n, m) = slstm_reference(slstm, x[b : b + 1, :length])
        got = [s_out[b, :length], s_carry[0][b], s_carry[1][b], s_carry[2][b], s_carry[3][b]]
        pairs[labels[0]] += [(g, w[0]) for g, w in zip(got, [want, c, n, m, h])]
        want, states = mlstm_reference(mlstm, x[b : b + 1, :length])
        got = [m_out[b, :length], *(leaf[b] for leaf in m_carry)]
        pairs[labels[1]] += [(g, w.reshape(np.shape(g))) for g, w in zip(got, [want[0], *states])]
    pairs[labels[2]] = list(zip(jax.tree.leaves((p_out, p_carry)), jax.tree.leaves((m_out, m_carry))))
    C0, n0, m0 = mlstm.initialize_carry((len(LENGTHS),))
    projected = jnp.swapaxes(mlstm.input_projection(x), 0, 1)
    _, parallel = mlstm.parallel(projected, jnp.ones(projected.shape[:2], bool), (C0, n0, jnp.full_like(m0, -jnp.inf)))
    pairs[labels[3]] = [(jnp.swapaxes(parallel, 0, 1), mlstm_reference(mlstm, x, form="parallel")[0])]
    rows = []
    for label, compared in pairs.items():
        errors = [np.max(np.abs(np.asarray(g) - np.asarray(w))) for g, w in compared]
        relative = [e / max(np.max(np.abs(np.asarray(w))), 1e-30) for e, (_, w) in zip(errors, compared)]
        rows.append((label, float(max(errors)), float(max(relative))))
    return rows


if __name__ == "__main__":
    print("| source | layers | bidirectional | max abs error |")
    print("|---|---|---|---:|")
    for kind in ("LSTM", "GRU"):
        for num_layers, bidirectional in ((1, False), (2, True)):
            error = torch_error(kind, num_layers, bidirectional)
            print(f"| torch.nn.{kind} (packed, lengths 1..50) | {num_layers} | {bidirectional} | {error:.1e} |")
        if kind == "LSTM":  # projection LSTMs (LSTMP)
            for num_layers, bidirectional in ((1, False), (2, True)):
                error = torch_error(kind, num_layers, bidirectional, proj_size=12)
                print(f"| torch.nn.LSTM proj_size=12 (packed, lengths 1..50) | {num_layers} | {bidirectional} "
                      f"| {error:.1e} |")  # fmt: skip
        for bidirectional in (False, True):
            print(f"| keras.layers.{kind} (T=50) | 1 | {bidirectional} | {keras_error(kind, bidirectional):.1e} |")
    print()
    print(f"| xLSTM cell (float32, in {IN}, H {HIDDEN}, lengths 1..50, random weights) | max abs error | "
          "relative to the largest value |")  # fmt: skip
    print("|---|---:|---:|")
    for label, error, relative in xlstm_errors():
        print(f"| {label} | {error:.1e} | {relative:.1e} |")
