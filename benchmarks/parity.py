"""Prints the largest absolute difference between lstm_jax and PyTorch / Keras on the same weights.

python benchmarks/parity.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lstm_jax.interop import from_keras, from_torch  # noqa: E402

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
