"""Recurrent cells: one time step each, all sharing one protocol.

Every cell is a Flax NNX module with

* ``cell(carry, x) -> (new_carry, y)``: one step; ``x <float>[batch, in_features]``.
* ``cell.initialize_carry(batch_shape)``: the zero state for ``batch_shape`` (e.g. ``(batch,)``).
* ``cell.input_projection(x)``: the part of the step that depends on ``x`` alone
  (``x W_x + b``, ``<float32>[..., gates * hidden]``); it works on any leading shape, so a
  sequence layer may compute it for all time steps at once.
* ``cell.recurrent_step(carry, projected_x, recurrent_mask=None)``: the rest of the step;
  ``recurrent_mask <float32>[batch, recurrent_features]`` multiplies the state where it enters the recurrent
  matmul (variational recurrent dropout, applied by the sequence layer in training).
* ``cell.output(carry)``: the output ``y`` a carry stands for (the layer uses it for zoneout).

``cell(carry, x) == cell.recurrent_step(carry, cell.input_projection(x))`` exactly.

Parameters are stored in ``param_dtype`` (float32 by default); the matrix products run in ``dtype``
(e.g. bfloat16) with float32 accumulation, and the carry and the gate arithmetic stay in float32 so
long sequences do not drift. Outputs ``y`` are returned in ``dtype``.

Gate layouts follow PyTorch (and Keras, which agrees for the LSTM) so weights import by copying:
LSTM columns are ``[i | f | g | o]``, GRU columns ``[r | z | n]``.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
LSTMCarry = tuple[Array, Array]  # (c, h), each <float32>[*batch, hidden]


def _matmul(x: Array, kernel: Array, dtype: Any) -> Array:
    """x @ kernel computed in `dtype`, accumulated and returned in float32."""
    return jnp.matmul(x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32).astype(jnp.float32)


def check_sizes(**sizes: int) -> None:
    """A ``ValueError`` naming the first size that is not a positive integer (every cell's feature counts)."""
    for name, value in sizes.items():
        if not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class _Cell(nnx.Module):
    """Shared parameter layout: W_x <[in, G*H]>, W_h <[R, G*H]>, b <[G*H]>; R = H except for projections."""

    num_gates: int = 1

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        use_bias: bool = True,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
        recurrent_kernel_init: nnx.Initializer = nnx.initializers.orthogonal(),
        rngs: nnx.Rngs,
        recurrent_features: int | None = None,
    ):
        check_sizes(in_features=in_features, hidden_features=hidden_features)
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.recurrent_features = recurrent_features or hidden_features  # width of the state W_h reads
        self.use_bias = use_bias
        self.dtype = dtype
        width = self.num_gates * hidden_features
        self.input_kernel = nnx.Param(kernel_init(rngs.params(), (in_features, width), param_dtype))
        # Orthogonal per gate block, as Keras and Flax do, so each gate starts well conditioned.
        blocks = [
            recurrent_kernel_init(rngs.params(), (self.recurrent_features, hidden_features), param_dtype)
            for _ in range(self.num_gates)
        ]
        self.recurrent_kernel = nnx.Param(jnp.concatenate(blocks, axis=1))
        self.bias = nnx.Param(jnp.zeros((width,), param_dtype)) if use_bias else None

    def input_projection(self, x: Array) -> Array:
        """x W_x + b: <float>[..., in] -> <float32>[..., G*H]."""
        projected = _matmul(x, self.input_kernel[...], self.dtype)
        if self.bias is not None:
            projected = projected + self.bias[...].astype(jnp.float32)
        return projected

    @property
    def output_features(self) -> int:
        """Width of the output ``y`` (and of the next layer's input)."""
        return self.recurrent_features

    def _recurrent_projection(self, h: Array, mask: Array | None = None) -> Array:
        """(h * mask) W_h: <float32>[batch, R] -> <float32>[batch, G*H]."""
        if mask is not None:
            h = h * mask
        return _matmul(h, self.recurrent_kernel[...], self.dtype)

    def initialize_carry(self, batch_shape: tuple[int, ...]) -> Any:
        return jnp.zeros((*batch_shape, self.hidden_features), jnp.float32)

    def output(self, carry) -> Array:
        return carry.astype(self.dtype)

    def __call__(self, carry, x: Array):
        return self.recurrent_step(carry, self.input_projection(x))

    def recurrent_step(self, carry, projected_x: Array, recurrent_mask: Array | None = None):  # pragma: no cover
        raise NotImplementedError


class LSTMCell(_Cell):
    r"""Long short-term memory cell (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

    Equations, with ``z = x_t W_x + h_{t-1} W_h + b`` split into four blocks of ``H`` columns::

        i_t = sigmoid(z_i)                 input gate
        f_t = sigmoid(z_f)                 forget gate
        g_t = tanh(z_g)                    candidate
        o_t = sigmoid(z_o)                 output gate
        c_t = f_t * c_{t-1} + i_t * g_t    memory cell
        h_t = o_t * tanh(c_t)              hidden state, also the output y_t

    Shapes: ``x_t <float>[batch, in]``, carry ``(c, h)`` each ``<float32>[batch, H]``,
    ``W_x <[in, 4H]>``, ``W_h <[H, 4H]>``, ``b <[4H]>`` (columns ``[i | f | g | o]``). The four gate
    products are one fused matmul each for the input and the recurrent part.

    ``proj_size=P`` (``0 < P < H``) makes it a projection LSTM (LSTMP, Sak, Senior & Beaufays 2014; PyTorch's
    ``proj_size``): ``h_t = (o_t * tanh(c_t)) W_r`` with ``W_r <[H, P]>``, so ``h`` and ``y`` are
    ``<float32>[batch, P]`` and ``W_h <[P, 4H]>``; ``c`` stays ``[batch, H]``.

    ``forget_bias`` (default 1.0) initialises the forget-gate bias so the cell remembers by default at the
    start of training (Jozefowicz et al. 2015).
    """

    num_gates = 4

    def __init__(self, in_features: int, hidden_features: int, *, forget_bias: float = 1.0, proj_size: int = 0,
                 **kwargs):  # fmt: skip
        if proj_size and not 0 < proj_size < hidden_features:
            raise ValueError(f"proj_size must be between 1 and hidden_features - 1 = {hidden_features - 1}, "
                             f"got {proj_size}")  # fmt: skip
        super().__init__(in_features, hidden_features, recurrent_features=proj_size or None, **kwargs)
        self.proj_size = proj_size
        projection_shape, param_dtype = (hidden_features, proj_size), self.input_kernel[...].dtype
        self.projection_kernel = (
            nnx.Param(nnx.initializers.lecun_normal()(kwargs["rngs"].params(), projection_shape, param_dtype))
            if proj_size
            else None
        )
        if self.bias is not None and forget_bias:
            H = hidden_features
            self.bias[...] = self.bias[...].at[H : 2 * H].set(forget_bias)

    def initialize_carry(self, batch_shape: tuple[int, ...]) -> LSTMCarry:
        c = jnp.zeros((*batch_shape, self.hidden_features), jnp.float32)
        return (c, jnp.zeros((*batch_shape, self.recurrent_features), jnp.float32))

    def output(self, carry: LSTMCarry) -> Array:
        return carry[1].astype(self.dtype)

    def _hidden(self, o: Array, c: Array) -> Array:
        """h_t = o_t * tanh(c_t), projected by W_r for an LSTMP (the layer-norm cell passes its normalised c)."""
        h = o * jnp.tanh(c)
        if self.projection_kernel is not None:
            h = _matmul(h, self.projection_kernel[...], self.dtype)
        return h

    def recurrent_step(self, carry: LSTMCarry, projected_x: Array, recurrent_mask: Array | None = None):
        c, h = carry
        z = projected_x + self._recurrent_projection(h, recurrent_mask)
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = self._hidden(jax.nn.sigmoid(o), c)
        return (c, h), h.astype(self.dtype)


class PeepholeLSTMCell(LSTMCell):
    r"""LSTM with diagonal peephole connections (Gers & Schmidhuber 2000; Gers, Schraudolph & Schmidhuber 2002).

    The gates also look at the memory cell; the input and forget gates see the previous cell, the
    output gate sees the new one::

        i_t = sigmoid(z_i + p_i * c_{t-1})
        f_t = sigmoid(z_f + p_f * c_{t-1})
        g_t = tanh(z_g)
        c_t = f_t * c_{t-1} + i_t * g_t
        o_t = sigmoid(z_o + p_o * c_t)
        h_t = o_t * tanh(c_t)

    with ``z`` as in :class:`LSTMCell` and ``p_i, p_f, p_o <float32>[H]`` elementwise (diagonal) peephole
    weights, initialised to zero so an untrained peephole cell starts as a plain LSTM. ``proj_size`` as in
    :class:`LSTMCell`.
    """

    def __init__(self, in_features: int, hidden_features: int, **kwargs):
        super().__init__(in_features, hidden_features, **kwargs)
        self.peephole_weights = nnx.Param(jnp.zeros((3, hidden_features), jnp.float32))  # rows: i, f, o

    def recurrent_step(self, carry: LSTMCarry, projected_x: Array, recurrent_mask: Array | None = None):
        c_prev, h = carry
        p_i, p_f, p_o = self.peephole_weights[...]
        z = projected_x + self._recurrent_projection(h, recurrent_mask)
        z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
        i = jax.nn.sigmoid(z_i + p_i * c_prev)
        f = jax.nn.sigmoid(z_f + p_f * c_prev)
        c = f * c_prev + i * jnp.tanh(z_g)
        h = self._hidden(jax.nn.sigmoid(z_o + p_o * c), c)
        return (c, h), h.astype(self.dtype)


def _normalize(v: Array, epsilon: float = 1e-5) -> Array:
    """(v - mean(v)) / sqrt(var(v) + epsilon) over the last axis (no gain, no bias)."""
    mean = jnp.mean(v, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(v - mean), axis=-1, keepdims=True)
    return (v - mean) * jax.lax.rsqrt(variance + epsilon)


class LayerNormLSTMCell(LSTMCell):
    r"""Layer-normalised LSTM (Ba, Kiros & Hinton 2016, "Layer Normalization", supplementary eq. 20-22).

    The input and recurrent contributions are normalised separately over all ``4H`` gate pre-activations,
    and the memory cell before the output tanh::

        z   = LN(h_{t-1} W_h; a_h) + LN(x_t W_x; a_x) + b          LN(v; a) = a * (v - mean(v)) / std(v)
        i_t, f_t, g_t, o_t = sigmoid(z_i), sigmoid(z_f), tanh(z_g), sigmoid(z_o)
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(LN(c_t; a_c) + b_c)

    ``std(v) = sqrt(var(v) + 1e-5)``. The paper's biases of the two gate normalisations add up with ``b``, so
    they are one parameter here. Shapes as in :class:`LSTMCell`, plus gains ``a_x, a_h <float32>[4H]``
    (``input_norm_scale``, ``recurrent_norm_scale``, initialised to 1) and ``a_c, b_c <float32>[H]``
    (``cell_norm_scale`` = 1, ``cell_norm_bias`` = 0). ``proj_size`` as in :class:`LSTMCell`.
    """

    def __init__(self, in_features: int, hidden_features: int, **kwargs):
        super().__init__(in_features, hidden_features, **kwargs)
        width = 4 * hidden_features
        self.input_norm_scale = nnx.Param(jnp.ones((width,), jnp.float32))
        self.recurrent_norm_scale = nnx.Param(jnp.ones((width,), jnp.float32))
        self.cell_norm_scale = nnx.Param(jnp.ones((hidden_features,), jnp.float32))
        self.cell_norm_bias = nnx.Param(jnp.zeros((hidden_features,), jnp.float32))

    def input_projection(self, x: Array) -> Array:
        """LN(x W_x; a_x) + b: <float>[..., in] -> <float32>[..., 4H]."""
        projected = _normalize(_matmul(x, self.input_kernel[...], self.dtype)) * self.input_norm_scale[...]
        if self.bias is not None:
            projected = projected + self.bias[...].astype(jnp.float32)
        return projected

    def recurrent_step(self, carry: LSTMCarry, projected_x: Array, recurrent_mask: Array | None = None):
        c, h = carry
        recurrent = _normalize(self._recurrent_projection(h, recurrent_mask)) * self.recurrent_norm_scale[...]
        i, f, g, o = jnp.split(projected_x + recurrent, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = self._hidden(jax.nn.sigmoid(o), _normalize(c) * self.cell_norm_scale[...] + self.cell_norm_bias[...])
        return (c, h), h.astype(self.dtype)


class GRUCell(_Cell):
    r"""Gated recurrent unit (Cho et al. 2014) with the reset gate applied after the recurrent matmul.

    This is the cuDNN / PyTorch ``nn.GRU`` / Keras ``reset_after=True`` form, so their weights import
    exactly::

        r_t = sigmoid(x_t W_xr + b_xr + h_{t-1} W_hr + b_hr)          reset gate
        u_t = sigmoid(x_t W_xu + b_xu + h_{t-1} W_hu + b_hu)          update gate
        n_t = tanh(x_t W_xn + b_xn + r_t * (h_{t-1} W_hn + b_hn))     candidate
        h_t = (1 - u_t) * n_t + u_t * h_{t-1}                          hidden state, also y_t

    Shapes: ``x_t <float>[batch, in]``, carry ``h <float32>[batch, H]``, ``W_x <[in, 3H]>``,
    ``W_h <[H, 3H]>`` (columns ``[r | u | n]``), input bias ``b <[3H]>`` and a separate recurrent bias
    ``b_h <[3H]>`` (needed because ``r_t`` multiplies ``h W_hn + b_hn``).
    """

    num_gates = 3

    def __init__(self, in_features: int, hidden_features: int, **kwargs):
        super().__init__(in_features, hidden_features, **kwargs)
        self.recurrent_bias = nnx.Param(jnp.zeros((3 * hidden_features,), jnp.float32)) if self.use_bias else None

    def recurrent_step(self, carry: Array, projected_x: Array, recurrent_mask: Array | None = None):
        h = carry
        recurrent = self._recurrent_projection(h, recurrent_mask)
        if self.recurrent_bias is not None:
            recurrent = recurrent + self.recurrent_bias[...]
        x_r, x_u, x_n = jnp.split(projected_x, 3, axis=-1)
        h_r, h_u, h_n = jnp.split(recurrent, 3, axis=-1)
        r = jax.nn.sigmoid(x_r + h_r)
        u = jax.nn.sigmoid(x_u + h_u)
        n = jnp.tanh(x_n + r * h_n)
        h = (1.0 - u) * n + u * h
        return h, h.astype(self.dtype)


class SimpleRNNCell(_Cell):
    r"""Elman recurrent cell, the baseline the gated cells are meant to beat on long dependencies::

        h_t = tanh(x_t W_x + h_{t-1} W_h + b)      hidden state, also y_t

    Shapes: ``x_t <float>[batch, in]``, carry ``h <float32>[batch, H]``, ``W_x <[in, H]>``,
    ``W_h <[H, H]>``, ``b <[H]>``.
    """

    num_gates = 1

    def recurrent_step(self, carry: Array, projected_x: Array, recurrent_mask: Array | None = None):
        h = jnp.tanh(projected_x + self._recurrent_projection(carry, recurrent_mask))
        return h, h.astype(self.dtype)
