"""Sequence layers: run a cell over time with exact variable-length semantics.

Semantics, for ``inputs <float>[batch, time, features]`` and ``lengths <int>[batch]``:

* the state stops changing after each sequence's last real token (``t >= lengths[b]``);
* outputs at padded positions are exactly zero;
* the final carry is the state at the last real token;
* ``reverse=True`` reverses only the real tokens of each sequence (padding stays at the end), runs
  forward over that, and puts the outputs back in the original positions;
* ``lengths[b] == 0`` is allowed: that sequence's outputs are all zero and its final carry is the
  initial carry (zeros unless ``initial_carry`` is given).

So a padded batch gives exactly what running each sequence alone, unpadded, gives.
Lengths above ``time`` are clipped to ``time``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lstm_jax import cells as cells_lib
from lstm_jax.fused import lstm_recurrence

Array = jax.Array


def reverse_padded(sequences: Array, lengths: Array) -> Array:
    """Reverses the first ``lengths[b]`` steps of each sequence; padding stays in place.

    ``sequences <[time, batch, ...]>`` (time-major), ``lengths <int>[batch]``. The permutation is its
    own inverse, so the same call puts reversed outputs back.
    """
    time = sequences.shape[0]
    steps = jnp.arange(time)[:, None]  # [T, 1]
    source = jnp.where(steps < lengths[None, :], lengths[None, :] - 1 - steps, steps)  # [T, B]
    source = source.reshape(source.shape + (1,) * (sequences.ndim - 2))
    return jnp.take_along_axis(sequences, source, axis=0)


def _masked_update(mask: Array, new: Any, old: Any) -> Any:
    """Where ``mask <bool>[batch]`` take the new pytree leaves, else keep the old ones."""
    return jax.tree.map(lambda n, o: jnp.where(mask[:, None], n, o), new, old)


class RNN(nnx.Module):
    """Runs ``cell`` over a padded batch of sequences.

    Args:
      cell: any cell with the protocol of :mod:`lstm_jax.cells`.
      unroll: passed to ``jax.lax.scan`` (an int, or ``True`` for a fully unrolled scan).
      reverse: process each sequence from its last real token to its first.
      time_major: inputs and outputs are ``[time, batch, features]`` instead of ``[batch, time, features]``.
      loop: ``"scan"`` (default) or ``"python"``: a plain Python loop over time, traced step by step
        (for benchmarks and tests; it compiles slowly for long sequences).
      fused: for a plain :class:`~lstm_jax.cells.LSTMCell` under ``loop="scan"``, use the fused recurrence
        with a hand-written backward pass (:mod:`lstm_jax.fused`); same function, faster training.

    Call: ``outputs, final_carry = rnn(inputs, lengths)`` with ``outputs <dtype>[batch, time, hidden]``.
    """

    def __init__(
        self,
        cell: nnx.Module,
        *,
        unroll: int | bool = 1,
        reverse: bool = False,
        time_major: bool = False,
        loop: str = "scan",
        fused: bool = True,
    ):
        if loop not in ("scan", "python"):
            raise ValueError(f"loop must be 'scan' or 'python', got {loop!r}")
        self.cell = cell
        self.unroll = unroll
        self.reverse = reverse
        self.time_major = time_major
        self.loop = loop
        self.fused = fused

    def __call__(self, inputs: Array, lengths: Array | None = None, *, initial_carry: Any = None):
        if inputs.ndim != 3:
            raise ValueError(f"inputs must be [batch, time, features] (or time-major), got shape {inputs.shape}")
        expected = getattr(self.cell, "in_features", inputs.shape[-1])
        if inputs.shape[-1] != expected:
            raise ValueError(f"inputs have {inputs.shape[-1]} features, the cell expects {expected}")
        x = inputs if self.time_major else jnp.swapaxes(inputs, 0, 1)  # [T, B, F]
        time, batch = x.shape[:2]
        if lengths is None:
            lengths = jnp.full((batch,), time, jnp.int32)
        lengths = jnp.clip(jnp.asarray(lengths, jnp.int32), 0, time)
        if initial_carry is None:
            initial_carry = self.cell.initialize_carry((batch,))
        if self.reverse:
            x = reverse_padded(x, lengths)
        masks = jnp.arange(time)[:, None] < lengths[None, :]  # [T, B]
        # Padded inputs are replaced by zeros before any cell math, so whatever they hold (even NaN or inf)
        # reaches neither the outputs nor any gradient.
        x = jnp.where(masks[..., None], x, jnp.zeros((), x.dtype))

        def step(carry, x_and_mask):
            x_t, mask_t = x_and_mask
            new_carry, y_t = self.cell(carry, x_t)
            carry = _masked_update(mask_t, new_carry, carry)
            return carry, jnp.where(mask_t[:, None], y_t, jnp.zeros_like(y_t))

        if self.fused and self.loop == "scan" and type(self.cell) is cells_lib.LSTMCell:
            cell = self.cell
            bias = cell.bias[...] if cell.bias is not None else jnp.zeros(cell.input_kernel.shape[1:], jnp.float32)
            carry, outputs = lstm_recurrence(
                x,
                cell.input_kernel[...],
                bias,
                cell.recurrent_kernel[...],
                masks,
                initial_carry,
                cell.dtype,
                self.unroll,
            )
            outputs = outputs.astype(cell.dtype)
        elif self.loop == "scan":
            carry, outputs = jax.lax.scan(step, initial_carry, (x, masks), unroll=self.unroll)
        else:
            carry, outputs_list = initial_carry, []
            for t in range(time):
                carry, y_t = step(carry, (x[t], masks[t]))
                outputs_list.append(y_t)
            outputs = jnp.stack(outputs_list)
        if self.reverse:
            outputs = reverse_padded(outputs, lengths)
        if not self.time_major:
            outputs = jnp.swapaxes(outputs, 0, 1)
        return outputs, carry


class Bidirectional(nnx.Module):
    """Runs a forward and a backward :class:`RNN` and concatenates their outputs on the feature axis.

    ``outputs, (forward_carry, backward_carry) = bi(inputs, lengths)``; the backward RNN must have
    ``reverse=True`` (its final carry is then the state after reading each sequence's first token).
    """

    def __init__(self, forward_rnn: RNN, backward_rnn: RNN):
        if forward_rnn.reverse or not backward_rnn.reverse:
            raise ValueError("Bidirectional needs forward_rnn.reverse=False and backward_rnn.reverse=True")
        if forward_rnn.time_major != backward_rnn.time_major:
            raise ValueError("forward_rnn and backward_rnn must agree on time_major")
        self.forward_rnn = forward_rnn
        self.backward_rnn = backward_rnn

    def __call__(self, inputs: Array, lengths: Array | None = None):
        forward_outputs, forward_carry = self.forward_rnn(inputs, lengths)
        backward_outputs, backward_carry = self.backward_rnn(inputs, lengths)
        outputs = jnp.concatenate([forward_outputs, backward_outputs], axis=-1)
        return outputs, (forward_carry, backward_carry)


class StackedRNN(nnx.Module):
    """Layers (:class:`RNN` or :class:`Bidirectional`) applied in sequence, dropout between them.

    ``outputs, carries = stack(inputs, lengths, rngs=None)``: ``carries`` holds each layer's final carry,
    first layer first. Inter-layer dropout runs only when ``rngs`` (with a ``dropout`` stream) is given,
    so inference is deterministic by default. Padded positions stay exactly zero through dropout.
    """

    def __init__(self, layers: list[nnx.Module], *, dropout_rate: float = 0.0):
        self.layers = nnx.List(layers)
        self.dropout = nnx.Dropout(dropout_rate)

    def __call__(self, inputs: Array, lengths: Array | None = None, *, rngs: nnx.Rngs | None = None):
        outputs, carries = inputs, []
        for index, layer in enumerate(self.layers):
            if index > 0:
                outputs = self.dropout(outputs, deterministic=rngs is None, rngs=rngs)
            outputs, carry = layer(outputs, lengths)
            carries.append(carry)
        return outputs, tuple(carries)


def make_recurrent(
    cell: str,
    in_features: int,
    hidden_features: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout_rate: float = 0.0,
    unroll: int | bool = 1,
    time_major: bool = False,
    fused: bool = True,
    rngs: nnx.Rngs,
    **cell_kwargs,
) -> StackedRNN:
    """Builds a (possibly bidirectional, possibly stacked) recurrent layer from a cell name.

    ``cell`` is one of ``lstm``, ``peephole_lstm``, ``gru``, ``simple_rnn``; ``cell_kwargs`` go to the
    cell (``dtype``, ``forget_bias``, ``use_bias``...). Outputs have ``hidden_features`` features, or twice
    that when bidirectional.
    """
    if cell not in cells_lib.CELLS:
        raise ValueError(f"unknown cell {cell!r}; choose one of {sorted(cells_lib.CELLS)}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    cell_class = cells_lib.CELLS[cell]

    def rnn(features: int, reverse: bool) -> RNN:
        return RNN(
            cell_class(features, hidden_features, rngs=rngs, **cell_kwargs),
            unroll=unroll,
            reverse=reverse,
            time_major=time_major,
            fused=fused,
        )

    layers, features = [], in_features
    for _ in range(num_layers):
        if bidirectional:
            layers.append(Bidirectional(rnn(features, False), rnn(features, True)))
        else:
            layers.append(rnn(features, False))
        features = hidden_features * (2 if bidirectional else 1)
    return StackedRNN(layers, dropout_rate=dropout_rate)
