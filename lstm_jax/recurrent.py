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
Lengths above ``time`` are clipped to ``time``; lengths of a non-integer dtype (floats, NaN, booleans) are
refused with a ``ValueError`` rather than rounded.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lstm_jax import cells as cells_lib
from lstm_jax import cudnn, native
from lstm_jax.fused import lstm_recurrence, native_gru_recurrence, native_lstm_recurrence
from lstm_jax.registry import CELLS

Array = jax.Array


def _check_integer_lengths(lengths) -> None:
    """Refuses lengths whose dtype is not an integer: 3.7 or NaN has no step to stop at, and flooring hid the bug."""
    dtype = lengths.dtype if hasattr(lengths, "dtype") else np.asarray(lengths).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"lengths must be integers, got dtype {dtype}; pass whole numbers as int32 "
                         "(e.g. lengths.astype(np.int32))")  # fmt: skip


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
    """Where ``mask <bool>[batch]`` take the new pytree leaves (any rank, batch first), else keep the old ones."""
    return jax.tree.map(lambda n, o: jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), n, o), new, old)


def _is_plain_lstm(cell: nnx.Module) -> bool:
    return type(cell) is cells_lib.LSTMCell and not cell.proj_size


def _has_native_kernel(cell: nnx.Module) -> bool:
    """A cell the native CPU kernel runs: the plain LSTM or the GRU."""
    return _is_plain_lstm(cell) or type(cell) is cells_lib.GRUCell


def _cell_name(cell: nnx.Module) -> str:
    """The cell's class for error messages, ``LSTMCell with proj_size`` for a projection LSTM."""
    return type(cell).__name__ + (" with proj_size" if getattr(cell, "proj_size", 0) else "")


def choose_backend(requested: str, cell: nnx.Module, *, zoneout: bool = False) -> str:
    """The recurrence that runs ``cell`` for a requested backend; every choice computes the same function.

    ``auto`` picks ``chunkwise`` for cells with a chunkwise form (the mLSTM), ``cudnn`` on an NVIDIA GPU for a
    float32 plain LSTM cell, on a CPU ``native`` for a float32 plain LSTM or GRU cell when its kernel builds
    here (:mod:`lstm_jax.native`) and the process has one device, ``fused`` for other plain LSTM cells, and
    ``scan`` otherwise (TPU, other cells, projections, bfloat16 on a GPU, zoneout). Asking for a backend that
    cannot run ``cell`` here raises a one-line ``ValueError``.
    """
    if requested == "auto":
        if hasattr(cell, "chunkwise"):  # as fast as parallel at 100 steps, 3x faster at 400, O(T) memory
            return "chunkwise"
        if zoneout:
            return "scan"
        if _cudnn_obstacle(cell) is None:
            return "cudnn"
        # XLA runs a custom call whole on every device of a sharded batch, so several devices keep XLA's loops.
        if _has_native_kernel(cell) and jax.device_count() == 1 and _native_obstacle(cell) is None:
            return "native"
        return "fused" if _is_plain_lstm(cell) and cudnn.platform() == "cpu" else "scan"
    name = _cell_name(cell)
    if requested in ("parallel", "chunkwise") and not hasattr(cell, requested):
        raise ValueError(f"backend={requested!r} needs a cell with a {requested} form (MLSTMCell), not {name}")
    if requested in ("fused", "native", "cudnn") and zoneout:
        raise ValueError(f"backend={requested!r} cannot apply zoneout; use 'scan' or 'auto'")
    if requested == "fused" and not _is_plain_lstm(cell):
        raise ValueError(f"backend='fused' runs plain LSTMCell only, not {name}; use 'scan' or 'auto'")
    if requested == "native" and not _has_native_kernel(cell):
        raise ValueError(f"backend='native' runs plain LSTMCell and GRUCell only, not {name}; use 'scan' or 'auto'")
    obstacle = {"cudnn": _cudnn_obstacle, "native": _native_obstacle}.get(requested, lambda cell: None)(cell)
    if obstacle is not None:
        raise ValueError(f"backend={requested!r} cannot run here: {obstacle}; use backend='auto'")
    return requested


def _cudnn_obstacle(cell: nnx.Module) -> str | None:
    if not _is_plain_lstm(cell):
        return f"cuDNN runs plain LSTMCell only, not {_cell_name(cell)}"
    if jnp.dtype(cell.dtype) != jnp.float32 or cell.input_kernel.dtype != jnp.float32:
        return f"cuDNN's LSTM in JAX is float32 only, this cell computes in {jnp.dtype(cell.dtype).name}"
    return cudnn.unavailable_reason()


def _native_obstacle(cell: nnx.Module) -> str | None:
    if cudnn.platform() != "cpu":
        return f"it runs on a CPU and JAX's default backend here is {cudnn.platform()!r}"
    if jnp.dtype(cell.dtype) != jnp.float32 or cell.input_kernel.dtype != jnp.float32:
        return f"the native kernel is float32 only, this cell computes in {jnp.dtype(cell.dtype).name}"
    reason = native.unavailable_reason()
    return None if reason is None else f"the native kernel is unavailable ({reason})"


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
        hand-written backward pass, :mod:`lstm_jax.fused`), ``"native"`` (plain float32 LSTM or GRU on a CPU: the
        same function in a compiled kernel that splits the batch over the cores, :mod:`lstm_jax.native`; no
        ``jax.jvp``), ``"cudnn"`` (plain float32 LSTM on an NVIDIA GPU,
        :mod:`lstm_jax.cudnn`; reverse-mode gradients only, no ``vmap``), ``"parallel"`` (cells with a parallel
        form, the mLSTM: the whole sequence at once, ``O(T^2)`` memory), ``"chunkwise"`` (the mLSTM's parallel form
        over chunks of 64 steps, ``O(T)`` memory, for long sequences), ``"python"`` (a Python loop traced
        step by step, for benchmarks and tests; it compiles slowly for long sequences).
        ``rnn.backend`` says which one runs (a training call with recurrent dropout runs ``scan``).
      recurrent_dropout_rate: variational recurrent dropout (Gal & Ghahramani 2016), training only: one mask
        per sequence (the same at every step) on the state where it enters the recurrent matmul.
      zoneout_rate: zoneout (Krueger et al. 2016): in training each unit of the carry keeps its previous value
        with this probability, drawn afresh at every step; at inference the expectation,
        ``p * previous + (1 - p) * new``. Outputs are then the (zoned) hidden state.

    Call: ``outputs, final_carry = rnn(inputs, lengths, initial_carry=None, rngs=None)`` with
    ``outputs <dtype>[batch, time, features]``; ``final_carry`` has the structure of ``initial_carry``.
    Recurrent dropout and zoneout's random masks need ``rngs`` with a ``dropout`` stream (training mode);
    without it the call is deterministic (inference). Padded steps are untouched by both.
    """

    def __init__(
        self,
        cell: nnx.Module,
        *,
        unroll: int | bool = 1,
        reverse: bool = False,
        time_major: bool = False,
        backend: str = "auto",
        recurrent_dropout_rate: float = 0.0,
        zoneout_rate: float = 0.0,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        for name, rate in (("recurrent_dropout_rate", recurrent_dropout_rate), ("zoneout_rate", zoneout_rate)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate}")
        if zoneout_rate and not hasattr(cell, "output"):
            raise ValueError(f"zoneout needs a cell with output(carry); {type(cell).__name__} has none")
        if recurrent_dropout_rate and not hasattr(cell, "recurrent_features"):
            raise ValueError(f"recurrent dropout needs a recurrent matmul; {type(cell).__name__} has none")
        self.cell = cell
        self.unroll = unroll
        self.reverse = reverse
        self.time_major = time_major
        self.requested_backend = backend
        self.recurrent_dropout_rate = recurrent_dropout_rate
        self.zoneout_rate = zoneout_rate
        if backend != "auto":
            self.backend  # a backend that cannot run this cell here is refused now, not at the first call  # noqa: B018

    @property
    def backend(self) -> str:
        """The recurrence that runs here: ``scan``, ``fused``, ``cudnn``, ``parallel``, ``chunkwise`` or ``python``."""
        return choose_backend(self.requested_backend, self.cell, zoneout=self.zoneout_rate > 0)

    def trains_noise(self, rngs: nnx.Rngs | None) -> bool:
        """Whether a call with ``rngs`` draws recurrent dropout or zoneout masks (training mode)."""
        return rngs is not None and (self.recurrent_dropout_rate > 0 or self.zoneout_rate > 0)

    def backend_for(self, rngs: nnx.Rngs | None) -> str:
        """The backend of a call: :attr:`backend`, except that a training call whose recurrent dropout or zoneout
        masks enter the step itself runs ``scan`` in place of the fused and cuDNN kernels."""
        backend = self.backend
        return "scan" if self.trains_noise(rngs) and backend in ("fused", "native", "cudnn") else backend

    def __call__(
        self,
        inputs: Array,
        lengths: Array | None = None,
        *,
        initial_carry: Any = None,
        rngs: nnx.Rngs | None = None,
    ):
        if inputs.ndim != 3:
            raise ValueError(f"inputs must be [batch, time, features] (or time-major), got shape {inputs.shape}")
        expected = getattr(self.cell, "in_features", inputs.shape[-1])
        if inputs.shape[-1] != expected:
            raise ValueError(f"inputs have {inputs.shape[-1]} features, the cell expects {expected}")
        training = self.trains_noise(rngs)
        backend = self.backend_for(rngs)
        x = inputs if self.time_major else jnp.swapaxes(inputs, 0, 1)  # [T, B, F]
        time, batch = x.shape[:2]
        if lengths is None:
            lengths = jnp.full((batch,), time, jnp.int32)
        _check_integer_lengths(lengths)
        if isinstance(lengths, np.ndarray | int | list):  # clipped before int32, so 2**31 + 5 does not wrap to 5
            lengths = np.clip(lengths, 0, time)
        lengths = jnp.clip(jnp.asarray(lengths, jnp.int32), 0, time)
        zeros = self.cell.initialize_carry((batch,))
        if initial_carry is None:
            initial_carry = zeros
        else:
            _check_carry(initial_carry, zeros, type(self.cell).__name__)
        if time == 0 or batch == 0:  # nothing to read: every form of every cell agrees on this without running
            outputs = jnp.zeros((time, batch, self.cell.output_features), self.cell.dtype)
            return (outputs if self.time_major else jnp.swapaxes(outputs, 0, 1)), initial_carry
        if self.reverse:
            x = reverse_padded(x, lengths)
        masks = jnp.arange(time)[:, None] < lengths[None, :]  # [T, B]
        # Padded inputs are replaced by zeros before any cell math, so whatever they hold (even NaN or inf)
        # reaches neither the outputs nor any gradient.
        x = jnp.where(masks[..., None], x, jnp.zeros((), x.dtype))
        noise = self._noise(rngs, initial_carry, time, batch) if training else (None, None)
        carry, outputs = RECURRENCES[backend](self, x, lengths, masks, initial_carry, noise)
        if self.reverse:
            outputs = reverse_padded(outputs, lengths)
        if not self.time_major:
            outputs = jnp.swapaxes(outputs, 0, 1)
        return outputs, carry

    def _noise(self, rngs: nnx.Rngs, carry: Any, time: int, batch: int):
        """Training masks: the recurrent dropout mask <float32>[B, R] (scaled by 1 / keep) for the whole
        sequence, and zoneout's keep-the-previous-value masks, one <bool>[T, B, ...] per carry leaf."""
        recurrent_mask = zoneout_masks = None
        if self.recurrent_dropout_rate > 0:
            keep = 1.0 - self.recurrent_dropout_rate
            width = self.cell.recurrent_features
            recurrent_mask = jax.random.bernoulli(rngs.dropout(), keep, (batch, width)).astype(jnp.float32) / keep
        if self.zoneout_rate > 0:
            leaves, treedef = jax.tree.flatten(carry)
            keys = jax.random.split(rngs.dropout(), len(leaves))
            zoneout_masks = jax.tree.unflatten(
                treedef,
                [jax.random.bernoulli(k, self.zoneout_rate, (time, *leaf.shape)) for k, leaf in zip(keys, leaves)],
            )
        return recurrent_mask, zoneout_masks

    def _step(self, carry, x_t: Array, mask_t: Array, recurrent_mask, zoneout_t):
        """One masked step; zoneout (training masks ``zoneout_t``, else the expectation) applied when on."""
        cell = self.cell
        if recurrent_mask is None:
            new_carry, y_t = cell(carry, x_t)
        else:
            new_carry, y_t = cell.recurrent_step(carry, cell.input_projection(x_t), recurrent_mask=recurrent_mask)
        if zoneout_t is not None:
            new_carry = jax.tree.map(jnp.where, zoneout_t, carry, new_carry)
            y_t = cell.output(new_carry)
        elif self.zoneout_rate > 0:
            p = self.zoneout_rate
            new_carry = jax.tree.map(lambda old, new: p * old + (1.0 - p) * new, carry, new_carry)
            y_t = cell.output(new_carry)
        carry = _masked_update(mask_t, new_carry, carry)
        return carry, jnp.where(mask_t[:, None], y_t, jnp.zeros_like(y_t))


# ------------------------------------------------------------------------------------------ the backends
# Each recurrence takes the layer, time-major inputs already in reading order (reversed for a backward layer,
# padding zeroed) <[T, B, F]>, lengths <int32>[B], masks <bool>[T, B], the initial carry and the training noise
# (recurrent dropout mask, zoneout masks; None at inference), and returns (final carry, outputs <[T, B, H]>).
# Adding a backend is one function here, one entry in RECURRENCES and its rule in choose_backend.


def _scan_step(rnn: RNN, noise):
    recurrent_mask, _ = noise

    def step(carry, inputs):
        x_t, mask_t, zoneout_t = inputs
        return rnn._step(carry, x_t, mask_t, recurrent_mask, zoneout_t)

    return step


def _check_carry(carry, zeros, cell_name: str) -> None:
    """A ``ValueError`` naming the expected structure when ``carry`` is not shaped like ``zeros``."""

    def shapes(tree):
        return jax.tree.map(lambda leaf: tuple(np.shape(leaf)), tree)

    try:
        same = jax.tree.structure(carry) == jax.tree.structure(zeros) and shapes(carry) == shapes(zeros)
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ValueError(f"initial_carry must be shaped like {cell_name}.initialize_carry((batch,)): "
                         f"{shapes(zeros)}, got {shapes(carry) if carry is not None else None}")  # fmt: skip


def _scan_recurrence(rnn: RNN, x, lengths, masks, initial_carry, noise):
    """``lax.scan`` over the cell; autodiff differentiates it (the one backend for jvp and higher derivatives)."""
    return jax.lax.scan(_scan_step(rnn, noise), initial_carry, (x, masks, noise[1]), unroll=rnn.unroll)


def _python_recurrence(rnn: RNN, x, lengths, masks, initial_carry, noise):
    """A Python loop traced step by step (benchmarks and tests; compiles slowly for long sequences)."""
    step, zoneout_masks, carry, outputs = _scan_step(rnn, noise), noise[1], initial_carry, []
    for t in range(x.shape[0]):
        carry, y_t = step(carry, (x[t], masks[t], jax.tree.map(lambda m, t=t: m[t], zoneout_masks)))
        outputs.append(y_t)
    return carry, jnp.stack(outputs)


def _fused_recurrence(rnn: RNN, x, lengths, masks, initial_carry, noise):
    """The plain LSTM with a hand-written backward pass (:mod:`lstm_jax.fused`)."""
    cell = rnn.cell
    bias = cell.bias[...] if cell.bias is not None else jnp.zeros(cell.input_kernel.shape[1:], jnp.float32)
    carry, outputs = lstm_recurrence(
        x, cell.input_kernel[...], bias, cell.recurrent_kernel[...], masks, initial_carry, cell.dtype, rnn.unroll
    )
    return carry, outputs.astype(cell.dtype)


def _native_recurrence(rnn: RNN, x, lengths, masks, initial_carry, noise):
    """The float32 plain LSTM or GRU on the compiled CPU kernel (:mod:`lstm_jax.native`)."""
    cell = rnn.cell
    zeros = jnp.zeros(cell.input_kernel.shape[1:], jnp.float32)
    bias = cell.bias[...] if cell.bias is not None else zeros
    if isinstance(cell, cells_lib.GRUCell):
        recurrent_bias = cell.recurrent_bias[...] if cell.recurrent_bias is not None else zeros
        return native_gru_recurrence(
            x, cell.input_kernel[...], bias, cell.recurrent_kernel[...], recurrent_bias, masks, initial_carry
        )
    return native_lstm_recurrence(x, cell.input_kernel[...], bias, cell.recurrent_kernel[...], masks, initial_carry)


def _cudnn_recurrence(rnn: RNN, x, lengths, masks, initial_carry, noise):
    """cuDNN's LSTM kernel (:mod:`lstm_jax.cudnn`); a backward layer's inputs are reversed already, so the
    kernel reads forward. (Whole bidirectional layers and stacks are one kernel call: :func:`_cudnn_layers`.)"""
    outputs, (carry,) = cudnn.lstm(
        jnp.swapaxes(x, 0, 1), lengths, [rnn.cell], [initial_carry], bidirectional=False, kernel=cudnn.cudnn_kernel
    )
    return carry, jnp.swapaxes(outputs, 0, 1).astype(rnn.cell.dtype)


def _cell_form_recurrence(form: str):
    """A cell's own whole-sequence form (the mLSTM's ``parallel`` and ``chunkwise``)."""

    def recurrence(rnn: RNN, x, lengths, masks, initial_carry, noise):
        return getattr(rnn.cell, form)(rnn.cell.input_projection(x), masks, initial_carry)

    return recurrence


RECURRENCES = {
    "scan": _scan_recurrence,
    "python": _python_recurrence,
    "fused": _fused_recurrence,
    "native": _native_recurrence,
    "cudnn": _cudnn_recurrence,
    "parallel": _cell_form_recurrence("parallel"),
    "chunkwise": _cell_form_recurrence("chunkwise"),
}
BACKENDS = ("auto", *RECURRENCES)


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

    def __call__(
        self,
        inputs: Array,
        lengths: Array | None = None,
        *,
        initial_carry: Any = None,
        rngs: nnx.Rngs | None = None,
    ):
        if initial_carry is not None and not (isinstance(initial_carry, tuple | list) and len(initial_carry) == 2):
            raise ValueError("initial_carry of a bidirectional layer must be (forward_carry, backward_carry), got "
                             f"{type(initial_carry).__name__}")  # fmt: skip
        forward_initial, backward_initial = initial_carry if initial_carry is not None else (None, None)
        if (rnns := _cudnn_directions(self, rngs)) is not None:
            outputs, (carries,) = _cudnn_layers([rnns], inputs, lengths, [initial_carry])
            return outputs, carries
        forward_outputs, forward_carry = self.forward_rnn(inputs, lengths, initial_carry=forward_initial, rngs=rngs)
        backward_outputs, backward_carry = self.backward_rnn(inputs, lengths, initial_carry=backward_initial, rngs=rngs)
        outputs = jnp.concatenate([forward_outputs, backward_outputs], axis=-1)
        return outputs, (forward_carry, backward_carry)


def _cudnn_directions(layer: nnx.Module, rngs: nnx.Rngs | None) -> list[RNN] | None:
    """A layer's RNNs (forward[, backward]) when the whole layer can be one cuDNN call, else ``None``."""
    if isinstance(layer, RNN):
        rnns = [layer] if not layer.reverse else []
    elif isinstance(layer, Bidirectional):
        rnns = [layer.forward_rnn, layer.backward_rnn]
    else:
        rnns = []
    if not rnns or any(rnn.backend_for(rngs) != "cudnn" for rnn in rnns):
        return None  # (training with recurrent dropout runs its masks under scan)
    return rnns


def _cudnn_layers(layers: list[list[RNN]], inputs: Array, lengths: Array | None, initial_carries: list[Any]):
    """Consecutive layers (each ``[forward]`` or ``[forward, backward]``) as one cuDNN call.

    Returns the top outputs (in the layers' layout and dtype) and one final carry per layer, in the
    structure :class:`RNN` / :class:`Bidirectional` return.
    """
    first = layers[0][0]
    x = jnp.swapaxes(inputs, 0, 1) if first.time_major else inputs
    batch, time = x.shape[:2]
    if lengths is None:
        lengths = jnp.full((batch,), time, jnp.int32)
    _check_integer_lengths(lengths)
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
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
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
        sequence = isinstance(initial_carries, tuple | list)
        if not sequence or len(initial_carries) != len(self.layers):
            count = len(initial_carries) if sequence else type(initial_carries).__name__
            raise ValueError(f"initial_carries must hold one carry per layer ({len(self.layers)}), got {count}")
        dropout_active = rngs is not None and self.dropout.rate > 0
        directions = [_cudnn_directions(layer, rngs) for layer in self.layers]
        if len(self.layers) > 1 and not dropout_active and all(directions):
            if len({len(rnns) for rnns in directions}) == 1:
                outputs, carries = _cudnn_layers(directions, inputs, lengths, list(initial_carries))
                return outputs, tuple(carries)
        outputs, carries = inputs, []
        for index, (layer, initial_carry) in enumerate(zip(self.layers, initial_carries)):
            if index > 0:
                outputs = self.dropout(outputs, deterministic=rngs is None, rngs=rngs)
            outputs, carry = layer(outputs, lengths, initial_carry=initial_carry, rngs=rngs)
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
    recurrent_dropout_rate: float = 0.0,
    zoneout_rate: float = 0.0,
    rngs: nnx.Rngs,
    **cell_kwargs,
) -> StackedRNN:
    """Builds a (possibly bidirectional, possibly stacked) recurrent layer from a cell name.

    ``cell`` is a name in :data:`lstm_jax.registry.CELLS`; ``cell_kwargs`` go to the cell (``dtype``,
    ``forget_bias``, ``use_bias``, ``proj_size``...); ``backend``, ``recurrent_dropout_rate`` and
    ``zoneout_rate`` to every :class:`RNN`. Outputs have the cell's ``output_features`` (``hidden_features``, or
    ``proj_size``), twice that when bidirectional.
    """
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; choose one of {sorted(CELLS)}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    cell_class = CELLS[cell]

    def rnn(features: int, reverse: bool) -> RNN:
        try:
            built = cell_class(features, hidden_features, rngs=rngs, **cell_kwargs)
        except TypeError as error:  # e.g. proj_size for a GRU: say which cell refuses which argument
            raise ValueError(f"cell {cell!r} does not take these arguments ({error})") from None
        return RNN(
            built,
            unroll=unroll,
            reverse=reverse,
            time_major=time_major,
            backend=backend,
            recurrent_dropout_rate=recurrent_dropout_rate,
            zoneout_rate=zoneout_rate,
        )

    layers, features = [], in_features
    for _ in range(num_layers):
        if bidirectional:
            layers.append(Bidirectional(rnn(features, False), rnn(features, True)))
        else:
            layers.append(rnn(features, False))
        top = layers[-1].forward_rnn if bidirectional else layers[-1]
        features = top.cell.output_features * (2 if bidirectional else 1)
    return StackedRNN(layers, dropout_rate=dropout_rate)
