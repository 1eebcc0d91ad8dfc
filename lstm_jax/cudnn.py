"""The cuDNN LSTM backend: our LSTM parameters run through ``jax.experimental.rnn.lstm`` on NVIDIA GPUs.

cuDNN computes a whole (multi-layer, optionally bidirectional) LSTM in one library call, which is much
faster on a GPU than a ``lax.scan`` of small matmuls. This module keeps our semantics around that call:

* padded inputs are zeroed first, outputs at padded positions are zero;
* the final state is the state at each sequence's last real token, and the reverse direction reads the
  real tokens only (cuDNN does both from ``seq_lengths``; lengths are clipped to ``[0, time]`` first,
  because lengths above ``time`` break cuDNN's reverse direction);
* ``length == 0`` returns the initial state and zero outputs. cuDNN is not asked to run empty
  sequences (it fails on them, jax-ml/jax#17966): the kernel gets ``max(length, 1)`` and the result for
  those rows is replaced by the initial state.

Weights: cuDNN takes one flat float32 vector; per pseudo-layer (layer 0 forward, layer 0 reverse, layer 1
forward, ...) ``W_ih <[4H, in]>`` and ``W_hh <[4H, H]>``, then all the biases ``b_ih, b_hh <[4H]>``, gates
``[i | f | g | o]`` as in our cells. Our cells hold ``input_kernel = W_ih^T``, ``recurrent_kernel = W_hh^T``
and one bias, so :func:`pack_weights` writes ``b_ih = bias, b_hh = 0`` and :func:`unpack_weights` reads back
``bias = b_ih + b_hh``. The vector is built from the cells' parameters on every call (gradients flow back
to the same parameters), so a model trained on a GPU runs unchanged on a CPU and the reverse.

Limits of the kernel (facts of ``jax.experimental.rnn``): float32 only, reverse-mode differentiation only
(no ``jax.jvp``, no gradient of a gradient, no ``jax.vmap``; use ``backend="scan"`` for those), dropout
inside the kernel is not used (inter-layer dropout is applied outside, layer by layer). On machines without
a GPU the same wrapper runs with :func:`reference_kernel` (JAX's ``lstm_ref``), which is how it is tested.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Carry = tuple[Array, Array]  # (c, h), each <float32>[batch, hidden]
Kernel = Callable[..., tuple[Array, Array, Array]]


def platform() -> str:
    """JAX's default backend (``cpu``, ``gpu``, ``tpu``); the one place the choice of kernel looks at."""
    return jax.default_backend()


def unavailable_reason() -> str | None:
    """Why the cuDNN kernel cannot run here, or ``None`` when it can."""
    if platform() != "gpu":
        return f"it needs an NVIDIA GPU and JAX's default backend here is {platform()!r}"
    try:
        from jax.experimental import rnn
    except ImportError as error:  # pragma: no cover - depends on the installed jax
        return f"jax.experimental.rnn cannot be imported ({error})"
    if rnn.gpu_rnn is None or not hasattr(rnn.gpu_rnn, "compute_rnn_workspace_reserve_space_sizes"):
        return "this jaxlib has no cuDNN RNN support (install jax[cuda12])"
    return None


def cudnn_kernel(x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers, bidirectional):
    """``jax.experimental.rnn.lstm`` (cuDNN), dropout off; runs on NVIDIA GPUs only."""
    from jax.experimental import rnn

    return rnn.lstm(x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers, 0.0, bidirectional)


def reference_kernel(x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers, bidirectional):
    """The same call answered by ``jax.experimental.rnn.lstm_ref``, JAX's pure-JAX reference that its own
    tests compare cuDNN against; runs anywhere."""
    from jax.experimental import rnn

    unpacked = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers, bidirectional)
    return rnn.lstm_ref(x, h_0, c_0, *unpacked, seq_lengths, input_size, hidden_size, num_layers, 0.0, bidirectional)


def num_weights(input_size: int, hidden_size: int, num_layers: int, bidirectional: bool) -> int:
    """Length of cuDNN's flat weight vector."""
    directions = 2 if bidirectional else 1
    per_gate_set = 4 * hidden_size
    total = 0
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else directions * hidden_size
        total += directions * per_gate_set * (layer_input + hidden_size + 2)
    return total


def pack_weights(cells: Sequence[Any]) -> Array:
    """cuDNN's flat vector from our LSTM cells, pseudo-layer order (layer 0 forward[, reverse], layer 1 ...)."""
    matrices, biases = [], []
    for cell in cells:
        matrices += [cell.input_kernel[...].T.reshape(-1), cell.recurrent_kernel[...].T.reshape(-1)]
        bias = cell.bias[...] if cell.bias is not None else jnp.zeros(cell.input_kernel.shape[1:], jnp.float32)
        biases += [bias, jnp.zeros_like(bias)]
    return jnp.concatenate(matrices + biases).astype(jnp.float32)


def unpack_weights(weights: Array, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool):
    """Our parameters from cuDNN's flat vector: one dict per pseudo-layer with ``input_kernel <[in, 4H]>``,
    ``recurrent_kernel <[H, 4H]>`` and ``bias <[4H]>`` (``b_ih + b_hh``)."""
    expected = num_weights(input_size, hidden_size, num_layers, bidirectional)
    if weights.shape != (expected,):
        raise ValueError(f"cuDNN weights have shape {weights.shape}, this LSTM needs ({expected},)")
    directions, gates = 2 if bidirectional else 1, 4 * hidden_size
    offset, layers = 0, []
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else directions * hidden_size
        for _ in range(directions):
            w_ih = weights[offset : offset + gates * layer_input].reshape(gates, layer_input)
            offset += gates * layer_input
            w_hh = weights[offset : offset + gates * hidden_size].reshape(gates, hidden_size)
            offset += gates * hidden_size
            layers.append({"input_kernel": w_ih.T, "recurrent_kernel": w_hh.T})
    for params in layers:
        params["bias"] = weights[offset : offset + gates] + weights[offset + gates : offset + 2 * gates]
        offset += 2 * gates
    return layers


def lstm(
    inputs: Array,
    lengths: Array,
    cells: Sequence[Any],
    initial_carries: Sequence[Carry],
    *,
    bidirectional: bool,
    kernel: Kernel = cudnn_kernel,
) -> tuple[Array, list[Carry]]:
    """A stack of LSTM layers in one kernel call, with our exact-length semantics.

    ``inputs <float32>[batch, time, in]`` (batch-major), ``lengths <int>[batch]``; ``cells`` and
    ``initial_carries`` are in pseudo-layer order (``num_layers * directions`` of each). Returns the top
    layer's outputs ``<float32>[batch, time, directions * H]`` and the final carry of every pseudo-layer.
    """
    directions = 2 if bidirectional else 1
    if len(cells) % directions or len(cells) != len(initial_carries):
        raise ValueError(f"{len(cells)} cells and {len(initial_carries)} carries for {directions} direction(s)")
    if inputs.dtype != jnp.float32:
        raise ValueError(f"the cuDNN LSTM computes in float32 only, inputs are {inputs.dtype}")
    num_layers = len(cells) // directions
    batch, time, input_size = inputs.shape
    hidden_size = cells[0].hidden_features
    weights = pack_weights(cells)
    if weights.shape != (num_weights(input_size, hidden_size, num_layers, bidirectional),):
        raise ValueError(f"the cells do not form a {num_layers}-layer LSTM over {input_size} input features")
    c_0 = jnp.stack([jnp.asarray(c, jnp.float32) for c, _ in initial_carries])
    h_0 = jnp.stack([jnp.asarray(h, jnp.float32) for _, h in initial_carries])
    if h_0.shape != (len(cells), batch, hidden_size) or c_0.shape != h_0.shape:
        raise ValueError(f"initial carries must be [{batch}, {hidden_size}] each, got {h_0.shape[1:]}")
    lengths = jnp.clip(jnp.asarray(lengths, jnp.int32), 0, time)
    real = (jnp.arange(time)[None, :] < lengths[:, None])[..., None]  # [B, T, 1]
    inputs = jnp.where(real, inputs, 0.0)
    outputs, h_n, c_n = kernel(
        inputs, h_0, c_0, weights, jnp.maximum(lengths, 1), input_size, hidden_size, num_layers, bidirectional
    )
    outputs = jnp.where(real, outputs, 0.0)
    empty = (lengths == 0)[None, :, None]
    h_n, c_n = jnp.where(empty, h_0, h_n), jnp.where(empty, c_0, c_n)
    return outputs, [(c_n[i], h_n[i]) for i in range(len(cells))]
