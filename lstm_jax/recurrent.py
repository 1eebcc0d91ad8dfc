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
from lstm_jax import cudnn
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


BACKENDS = ("auto", "scan", "fused", "cudnn", "python")


def choose_backend(requested: str, cell: nnx.Module) -> str:
    """The recurrence that runs ``cell`` for a requested backend; every choice computes the same function.

    ``auto`` picks ``cudnn`` on an NVIDIA GPU for a float32 plain LSTM cell, ``fused`` for a plain LSTM cell on
    a CPU, and ``scan`` otherwise (TPU, other cells, bfloat16 on a GPU). Asking for a backend that cannot run
    ``cell`` here raises a one-line ``ValueError``.
    """
    plain_lstm = type(cell) is cells_lib.LSTMCell
    if requested == "auto":
        if _cudnn_obstacle(cell) is None:
            return "cudnn"
        return "fused" if plain_lstm and cudnn.platform() == "cpu" else "scan"
    if requested == "fused" and not plain_lstm:
        raise ValueError(f"backend='fused' runs plain LSTMCell only, not {type(cell).__name__}; use 'scan' or 'auto'")
    if requested == "cudnn" and (reason := _cudnn_obstacle(cell)) is not None:
        raise ValueError(f"backend='cudnn' cannot run here: {reason}; use backend='auto'")
    return requested


def _cudnn_obstacle(cell: nnx.Module) -> str | None:
    if type(cell) is not cells_lib.LSTMCell:
        return f"cuDNN runs plain LSTMCell only, not {type(cell).__name__}"
    if jnp.dtype(cell.dtype) != jnp.float32 or cell.input_kernel.dtype != jnp.float32:
        return f"cuDNN's LSTM in JAX is float32 only, this cell computes in {jnp.dtype(cell.dtype).name}"
    return cudnn.unavailable_reason()


class RNN(nnx.Module):
    """Runs ``cell`` over a padded batch of sequences.

    Args:
      cell: any cell with the protocol of :mod:`lstm_jax.cells`.
      unroll: passed to ``jax.lax.scan`` (an int, or ``True`` for a fully unrolled scan).
      reverse: process each sequence from its last real token to its first.
      time_major: inputs and outputs are ``[time, batch, features]`` instead of ``[batch, time, features]``.
      backend: how the recurrence runs; all compute the same function (see :func:`choose_backend`):
        ``"auto"`` (default), ``"scan"`` (``lax.scan`` over the cell, differentiated by autodiff; the only
        one supporting ``jax.jvp`` and higher derivatives), ``"fused"`` (plain LSTM: a scan with a
        hand-written backward pass, :mod:`lstm_jax.fused`), ``"cudnn"`` (plain float32 LSTM on an NVIDIA GPU,
        :mod:`lstm_jax.cudnn`; reverse-mode gradients only, no ``vmap``), ``"python"`` (a Python loop traced
        step by step, for benchmarks and tests; it compiles slowly for long sequences).
        ``rnn.backend`` says which one runs.

    Call: ``outputs, final_carry = rnn(inputs, lengths, initial_carry=None)`` with
    ``outputs <dtype>[batch, time, hidden]``; ``final_carry`` has the structure of ``initial_carry``.
    """

    def __init__(
        self,
        cell: nnx.Module,
        *,
        unroll: int | bool = 1,
        reverse: bool = False,
        time_major: bool = False,
        backend: str = "auto",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "fused":
            choose_backend(backend, cell)  # refuses other cells now rather than at the first call
        self.cell = cell
        self.unroll = unroll
        self.reverse = reverse
        self.time_major = time_major
        self.requested_backend = backend

    @property
    def backend(self) -> str:
        """The recurrence that runs on this machine: ``scan``, ``fused``, ``cudnn`` or ``python``."""
        return choose_backend(self.requested_backend, self.cell)

    def __call__(self, inputs: Array, lengths: Array | None = None, *, initial_carry: Any = None):
        if inputs.ndim != 3:
            raise ValueError(f"inputs must be [batch, time, features] (or time-major), got shape {inputs.shape}")
        expected = getattr(self.cell, "in_features", inputs.shape[-1])
        if inputs.shape[-1] != expected:
            raise ValueError(f"inputs have {inputs.shape[-1]} features, the cell expects {expected}")
        backend = self.backend
        if backend == "cudnn" and not self.reverse:
            outputs, (carry,) = _run_cudnn([[self]], inputs, lengths, [initial_carry])
            return outputs, carry
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
        carry, outputs = self._recurrence(backend, x, lengths, masks, initial_carry)
        if self.reverse:
            outputs = reverse_padded(outputs, lengths)
        if not self.time_major:
            outputs = jnp.swapaxes(outputs, 0, 1)
        return outputs, carry

    def _recurrence(self, backend: str, x: Array, lengths: Array, masks: Array, initial_carry: Any):
        """(final carry, outputs <[T, B, H]>) over time-major inputs already in reading order."""

        def step(carry, x_and_mask):
            x_t, mask_t = x_and_mask
            new_carry, y_t = self.cell(carry, x_t)
            carry = _masked_update(mask_t, new_carry, carry)
            return carry, jnp.where(mask_t[:, None], y_t, jnp.zeros_like(y_t))

        cell = self.cell
        if backend == "cudnn":  # a reverse-only layer: the inputs are reversed already, cuDNN reads forward
            outputs, (carry,) = cudnn.lstm(
                jnp.swapaxes(x, 0, 1), lengths, [cell], [initial_carry], bidirectional=False, kernel=cudnn.cudnn_kernel
            )
            return carry, jnp.swapaxes(outputs, 0, 1).astype(cell.dtype)
        if backend == "fused":
            bias = cell.bias[...] if cell.bias is not None else jnp.zeros(cell.input_kernel.shape[1:], jnp.float32)
            carry, outputs = lstm_recurrence(
                x, cell.input_kernel[...], bias, cell.recurrent_kernel[...], masks, initial_carry, cell.dtype,
                self.unroll,
            )  # fmt: skip
            return carry, outputs.astype(cell.dtype)
        if backend == "scan":
            return jax.lax.scan(step, initial_carry, (x, masks), unroll=self.unroll)
        carry, outputs = initial_carry, []
        for t in range(x.shape[0]):
            carry, y_t = step(carry, (x[t], masks[t]))
            outputs.append(y_t)
        return carry, jnp.stack(outputs)


class Bidirectional(nnx.Module):
    """Runs a forward and a backward :class:`RNN` and concatenates their outputs on the feature axis.

    ``outputs, (forward_carry, backward_carry) = bi(inputs, lengths, initial_carry=None)``; ``initial_carry``
    is ``(forward, backward)`` like the returned carries, either may be ``None`` (zeros). The backward RNN
    must have ``reverse=True`` (its final carry is then the state after reading each sequence's first token).
    When both directions run on cuDNN they are one bidirectional cuDNN call.
    """

    def __init__(self, forward_rnn: RNN, backward_rnn: RNN):
        if forward_rnn.reverse or not backward_rnn.reverse:
            raise ValueError("Bidirectional needs forward_rnn.reverse=False and backward_rnn.reverse=True")
        if forward_rnn.time_major != backward_rnn.time_major:
            raise ValueError("forward_rnn and backward_rnn must agree on time_major")
        self.forward_rnn = forward_rnn
        self.backward_rnn = backward_rnn

    def __call__(self, inputs: Array, lengths: Array | None = None, *, initial_carry: Any = None):
        forward_initial, backward_initial = initial_carry if initial_carry is not None else (None, None)
        if _cudnn_directions(self) is not None:
            outputs, (carries,) = _run_cudnn([_cudnn_directions(self)], inputs, lengths, [initial_carry])
            return outputs, carries
        forward_outputs, forward_carry = self.forward_rnn(inputs, lengths, initial_carry=forward_initial)
        backward_outputs, backward_carry = self.backward_rnn(inputs, lengths, initial_carry=backward_initial)
        outputs = jnp.concatenate([forward_outputs, backward_outputs], axis=-1)
        return outputs, (forward_carry, backward_carry)


def _cudnn_directions(layer: nnx.Module) -> list[RNN] | None:
    """A layer's RNNs (forward[, backward]) when the whole layer can be one cuDNN call, else ``None``."""
    if isinstance(layer, RNN):
        rnns = [layer] if not layer.reverse else []
    elif isinstance(layer, Bidirectional):
        rnns = [layer.forward_rnn, layer.backward_rnn]
    else:
        rnns = []
    if not rnns or any(rnn.backend != "cudnn" for rnn in rnns):
        return None
    return rnns


def _run_cudnn(layers: list[list[RNN]], inputs: Array, lengths: Array | None, initial_carries: list[Any]):
    """Consecutive layers (each ``[forward]`` or ``[forward, backward]``) as one cuDNN call.

    Returns the top outputs (in the layers' layout and dtype) and one final carry per layer, in the
    structure :class:`RNN` / :class:`Bidirectional` return.
    """
    first = layers[0][0]
    x = jnp.swapaxes(inputs, 0, 1) if first.time_major else inputs
    batch, time = x.shape[:2]
    if lengths is None:
        lengths = jnp.full((batch,), time, jnp.int32)
    cells, carries = [], []
    for rnns, layer_carry in zip(layers, initial_carries):
        per_direction = [layer_carry] if len(rnns) == 1 else (layer_carry or (None, None))
        for rnn, carry in zip(rnns, per_direction):
            cells.append(rnn.cell)
            carries.append(carry if carry is not None else rnn.cell.initialize_carry((batch,)))
    outputs, finals = cudnn.lstm(
        x.astype(jnp.float32), lengths, cells, carries, bidirectional=len(layers[0]) == 2, kernel=cudnn.cudnn_kernel
    )
    outputs = outputs.astype(first.cell.dtype)
    if first.time_major:
        outputs = jnp.swapaxes(outputs, 0, 1)
    if len(layers[0]) == 1:
        return outputs, finals
    return outputs, [(finals[i], finals[i + 1]) for i in range(0, len(finals), 2)]


class StackedRNN(nnx.Module):
    """Layers (:class:`RNN` or :class:`Bidirectional`) applied in sequence, dropout between them.

    ``outputs, carries = stack(inputs, lengths, initial_carries=None, rngs=None)``: ``carries`` holds each
    layer's final carry, first layer first; ``initial_carries`` has the same structure (``None`` for zeros,
    also per layer). Feeding a sequence in chunks, each chunk starting from the carries the previous one
    returned, equals feeding it whole (unidirectional layers). Inter-layer dropout runs only when ``rngs``
    (with a ``dropout`` stream) is given, so inference is deterministic by default. Padded positions stay
    exactly zero through dropout. When every layer runs on cuDNN and no dropout is active, the whole stack
    is one cuDNN call.
    """

    def __init__(self, layers: list[nnx.Module], *, dropout_rate: float = 0.0):
        self.layers = nnx.List(layers)
        self.dropout = nnx.Dropout(dropout_rate)

    def __call__(
        self,
        inputs: Array,
        lengths: Array | None = None,
        *,
        initial_carries: Any = None,
        rngs: nnx.Rngs | None = None,
    ):
        if initial_carries is None:
            initial_carries = (None,) * len(self.layers)
        if len(initial_carries) != len(self.layers):
            raise ValueError(f"initial_carries has {len(initial_carries)} entries for {len(self.layers)} layers")
        dropout_active = rngs is not None and self.dropout.rate > 0
        directions = [_cudnn_directions(layer) for layer in self.layers]
        if len(self.layers) > 1 and not dropout_active and all(directions):
            if len({len(rnns) for rnns in directions}) == 1:
                outputs, carries = _run_cudnn(directions, inputs, lengths, list(initial_carries))
                return outputs, tuple(carries)
        outputs, carries = inputs, []
        for index, (layer, initial_carry) in enumerate(zip(self.layers, initial_carries)):
            if index > 0:
                outputs = self.dropout(outputs, deterministic=rngs is None, rngs=rngs)
            outputs, carry = layer(outputs, lengths, initial_carry=initial_carry)
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
    backend: str = "auto",
    rngs: nnx.Rngs,
    **cell_kwargs,
) -> StackedRNN:
    """Builds a (possibly bidirectional, possibly stacked) recurrent layer from a cell name.

    ``cell`` is one of ``lstm``, ``peephole_lstm``, ``gru``, ``simple_rnn``; ``cell_kwargs`` go to the
    cell (``dtype``, ``forget_bias``, ``use_bias``...); ``backend`` to every :class:`RNN`. Outputs have
    ``hidden_features`` features, or twice that when bidirectional.
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
            backend=backend,
        )

    layers, features = [], in_features
    for _ in range(num_layers):
        if bidirectional:
            layers.append(Bidirectional(rnn(features, False), rnn(features, True)))
        else:
            layers.append(rnn(features, False))
        features = hidden_features * (2 if bidirectional else 1)
    return StackedRNN(layers, dropout_rate=dropout_rate)
