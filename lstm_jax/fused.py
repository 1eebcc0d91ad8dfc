"""A fused, masked LSTM recurrence with a hand-written backward pass (``jax.custom_vjp``).

Same function as ``RNN(LSTMCell)`` over a time-major batch, but differentiated the way cuDNN and oneDNN
do it instead of by autodiff through ``lax.scan``:

* forward: one ``lax.scan``; each step does ``z = x_t W_x + b + h W_h`` and the gate arithmetic, and
  (only when differentiated) saves ``h_{t-1}``, ``c_{t-1}``, the activated gates and ``tanh(c_t)``;
* backward: one reverse ``lax.scan`` whose body is a single ``[B, 4H] x [4H, H]`` matmul plus elementwise
  work, producing the gate gradients ``dz <[T, B, 4H]>``; then ``dW_h = sum_t h_{t-1}^T dz_t``,
  ``dW_x = sum_t x_t^T dz_t``, ``db = sum_t dz_t`` and ``dx = dz W_x^T`` are each one large matmul
  outside the loop.

Autodiff through the scan instead carries every per-step weight gradient through the loop and does
three small matmuls per step; see benchmarks/ for the measured difference.

Masking (variable lengths) follows :mod:`lstm_jax.recurrent`: where ``mask[t, b]`` is False the carry is
kept and the output is zero, and the backward pass routes the carry's gradient straight through.

Shapes: ``x <[T, B, F]>``, ``input_kernel <[F, 4H]>``, ``bias <[4H]>``, ``recurrent_kernel <[H, 4H]>``,
``mask <bool>[T, B]``, carry ``(c, h)`` each ``<float32>[B, H]``. Gate columns ``[i | f | g | o]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lstm_jax import native
from lstm_jax.cells import _matmul


def _step(params, dtype, carry, inputs, *, save: bool):
    input_kernel, bias, recurrent_kernel = params
    c, h = carry
    x_t, mask_t = inputs
    z = _matmul(x_t, input_kernel, dtype) + bias + _matmul(h, recurrent_kernel, dtype)
    zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)
    c_new = f * c + i * g
    tanh_c = jnp.tanh(c_new)
    h_new = o * tanh_c
    keep = mask_t[:, None]
    carry = (jnp.where(keep, c_new, c), jnp.where(keep, h_new, h))
    y = jnp.where(keep, h_new, 0.0)
    if save:
        return carry, (y, (c, h, jnp.concatenate([i, f, g, o], axis=-1), tanh_c))
    return carry, y


def _forward(x, input_kernel, bias, recurrent_kernel, mask, carry, dtype, unroll, save):
    params = (input_kernel, bias.astype(jnp.float32), recurrent_kernel)
    step = functools.partial(_step, params, dtype, save=save)
    return jax.lax.scan(step, carry, (x, mask), unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def lstm_recurrence(x, input_kernel, bias, recurrent_kernel, mask, carry, dtype=jnp.float32, unroll=1):
    """Returns ``(final_carry, outputs <[T, B, H]>)``; see the module docstring."""
    final_carry, outputs = _forward(x, input_kernel, bias, recurrent_kernel, mask, carry, dtype, unroll, False)
    return final_carry, outputs


def _lstm_fwd(x, input_kernel, bias, recurrent_kernel, mask, carry, dtype, unroll):
    final_carry, (outputs, saved) = _forward(x, input_kernel, bias, recurrent_kernel, mask, carry, dtype, unroll, True)
    return (final_carry, outputs), (x, input_kernel, bias, recurrent_kernel, mask, saved)


def _lstm_bwd(dtype, unroll, residuals, cotangents):
    x, input_kernel, bias, recurrent_kernel, mask, (c_prev, h_prev, gates, tanh_c) = residuals
    (d_c_final, d_h_final), d_outputs = cotangents
    recurrent_kernel_t = recurrent_kernel.T

    def back_step(carry, inputs):
        d_c, d_h = carry  # gradient with respect to the carry after this step
        d_y, keep, c, gates_t, tanh_c_t = inputs
        keep = keep[:, None]
        i, f, g, o = jnp.split(gates_t, 4, axis=-1)
        d_h_new = jnp.where(keep, d_h + d_y, 0.0)
        d_c_new = jnp.where(keep, d_c, 0.0) + d_h_new * o * (1.0 - tanh_c_t**2)
        dz = jnp.concatenate(
            [
                d_c_new * g * i * (1.0 - i),  # input gate
                d_c_new * c * f * (1.0 - f),  # forget gate
                d_c_new * i * (1.0 - g**2),  # candidate
                d_h_new * tanh_c_t * o * (1.0 - o),  # output gate
            ],
            axis=-1,
        )
        d_h_prev = _matmul(dz, recurrent_kernel_t, dtype) + jnp.where(keep, 0.0, d_h)
        d_c_prev = d_c_new * f + jnp.where(keep, 0.0, d_c)
        return (d_c_prev, d_h_prev), dz

    d_c_final = jnp.asarray(d_c_final, jnp.float32)
    d_h_final = jnp.asarray(d_h_final, jnp.float32)
    (d_c0, d_h0), dz = jax.lax.scan(
        back_step,
        (d_c_final, d_h_final),
        (d_outputs.astype(jnp.float32), mask, c_prev, gates, tanh_c),
        reverse=True,
        unroll=unroll,
    )
    return (*_weight_gradients(x, input_kernel, bias, recurrent_kernel, h_prev, dz, dtype), None, (d_c0, d_h0))


def _weight_gradients(x, input_kernel, bias, recurrent_kernel, h_prev, dz, dtype):
    """``d_x, d_input_kernel, d_bias, d_recurrent_kernel`` from the gates' gradient: one large matmul each."""
    d_x, d_input_kernel, d_bias = _input_gradients(x, input_kernel, bias, dz, dtype)
    return d_x, d_input_kernel, d_bias, _kernel_gradient(h_prev, dz, recurrent_kernel)


def _input_gradients(x, input_kernel, bias, dz, dtype):
    """``d_x, d_input_kernel, d_bias`` from the gradient ``dz <[T, B, G]>`` of ``x W_x + b``."""
    d_x = _matmul(dz, input_kernel.T, dtype).astype(x.dtype)
    return d_x, _kernel_gradient(x.astype(jnp.float32), dz, input_kernel), jnp.sum(dz, axis=(0, 1)).astype(bias.dtype)


def _kernel_gradient(inputs, dz, kernel):
    """``sum_t inputs_t^T dz_t``: a kernel's gradient from its inputs ``<[T, B, F]>`` and its output's gradient."""
    return jnp.einsum("tbf,tbg->fg", inputs, dz).astype(kernel.dtype)


def _f32(x):
    return jnp.asarray(x, jnp.float32)


lstm_recurrence.defvjp(_lstm_fwd, _lstm_bwd)


# ------------------------------------------------------------------ the same function on the native CPU kernel
# Same arguments, results and saved values; the loops run in lstm_jax/csrc/lstm_cpu.cc (float32 only).


def _native_forward(x, input_kernel, bias, recurrent_kernel, mask, carry, save):
    c0, h0 = carry
    results = native.lstm_forward(
        _f32(x), _f32(input_kernel), _f32(bias), _f32(recurrent_kernel), mask, _f32(c0), _f32(h0), save=save
    )
    (outputs, c, h), saved = results[:3], results[3:]
    return (c, h), outputs, saved


@jax.custom_vjp
def native_lstm_recurrence(x, input_kernel, bias, recurrent_kernel, mask, carry):
    """:func:`lstm_recurrence` in float32 on the CPU kernel of :mod:`lstm_jax.native`."""
    final_carry, outputs, _ = _native_forward(x, input_kernel, bias, recurrent_kernel, mask, carry, False)
    return final_carry, outputs


def _native_fwd(x, input_kernel, bias, recurrent_kernel, mask, carry):
    final_carry, outputs, saved = _native_forward(x, input_kernel, bias, recurrent_kernel, mask, carry, True)
    return (final_carry, outputs), (x, input_kernel, bias, recurrent_kernel, mask, saved)


def _native_bwd(residuals, cotangents):
    x, input_kernel, bias, recurrent_kernel, mask, (c_prev, h_prev, gates, tanh_c) = residuals
    (d_c_final, d_h_final), d_outputs = cotangents
    dz, d_c0, d_h0 = native.lstm_backward(
        _f32(d_outputs), recurrent_kernel, mask, c_prev, gates, tanh_c, _f32(d_c_final), _f32(d_h_final)
    )
    grads = _weight_gradients(x, input_kernel, bias, recurrent_kernel, h_prev, dz, jnp.float32)
    return (*grads, None, (d_c0, d_h0))


native_lstm_recurrence.defvjp(_native_fwd, _native_bwd)


# ------------------------------------------------------------------ the GRU on the native CPU kernel
# GRUCell's function (reset gate after the recurrent matmul) with the same structure of backward pass: the
# kernel's reverse loop gives the gradients of zx = x W_x + b and zh = h W_h + b_h, and XLA the weight gradients.


def _native_gru_forward(x, input_kernel, bias, recurrent_kernel, recurrent_bias, mask, h0, save):
    args = (_f32(x), _f32(input_kernel), _f32(bias), _f32(recurrent_kernel), _f32(recurrent_bias), mask, _f32(h0))
    results = native.gru_forward(*args, save=save)
    return results[1], results[0], results[2:]


@jax.custom_vjp
def native_gru_recurrence(x, input_kernel, bias, recurrent_kernel, recurrent_bias, mask, h0):
    """Returns ``(final_h, outputs <[T, B, H]>)`` for a float32 ``GRUCell`` on the CPU kernel; shapes as the LSTM's
    with ``3H`` gate columns ``[r | u | n]`` and a recurrent bias ``<[3H]>``."""
    final_h, outputs, _ = _native_gru_forward(x, input_kernel, bias, recurrent_kernel, recurrent_bias, mask, h0, False)
    return final_h, outputs


def _native_gru_fwd(x, input_kernel, bias, recurrent_kernel, recurrent_bias, mask, h0):
    final_h, outputs, saved = _native_gru_forward(
        x, input_kernel, bias, recurrent_kernel, recurrent_bias, mask, h0, True
    )
    return (final_h, outputs), (x, input_kernel, bias, recurrent_kernel, recurrent_bias, mask, saved)


def _native_gru_bwd(residuals, cotangents):
    x, input_kernel, bias, recurrent_kernel, recurrent_bias, mask, (h_prev, gates, zh_n) = residuals
    d_h_final, d_outputs = cotangents
    dzx, dzh, d_h0 = native.gru_backward(_f32(d_outputs), recurrent_kernel, mask, h_prev, gates, zh_n, _f32(d_h_final))
    d_x, d_input_kernel, d_bias = _input_gradients(x, input_kernel, bias, dzx, jnp.float32)
    d_recurrent_kernel = _kernel_gradient(h_prev, dzh, recurrent_kernel)
    d_recurrent_bias = jnp.sum(dzh, axis=(0, 1)).astype(recurrent_bias.dtype)
    return d_x, d_input_kernel, d_bias, d_recurrent_kernel, d_recurrent_bias, None, d_h0


native_gru_recurrence.defvjp(_native_gru_fwd, _native_gru_bwd)
