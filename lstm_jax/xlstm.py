"""xLSTM cells (Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter & Hochreiter 2024,
"xLSTM: Extended Long Short-Term Memory", arXiv 2405.04517), in the cell protocol of :mod:`lstm_jax.cells`.

Both cells gate with exponentials. An exponential input gate can grow without bound, so each cell carries a
stabiliser state ``m`` (a running maximum of the log-gates) and keeps its memory scaled by ``exp(-m)``; the
outputs are ratios in which that scale cancels, so the stabiliser changes no value, only the floating-point
range (tested at 2,000 steps with large gate pre-activations).

* :class:`SLSTMCell`: scalar memory ``c`` with a normaliser ``n``, recurrent weights block-diagonal over heads
  (memory mixing inside a head); the same arithmetic as the reference ``xlstm`` package's "vanilla" sLSTM.
* :class:`MLSTMCell`: a matrix memory ``C`` per head updated by the outer product ``v k^T``; no hidden-to-
  hidden recurrence, so a whole sequence also has a parallel form (:meth:`MLSTMCell.parallel`, run by
  ``backend="parallel"``) and a chunkwise form (:meth:`MLSTMCell.chunkwise`, ``backend="chunkwise"``: the parallel
  form over chunks, passing the state on); the same arithmetic as ``mlstm_kernels``' native PyTorch recurrent and
  parallel kernels.

Parameters are stored in ``param_dtype`` (float32); matmuls run in ``dtype`` with float32 accumulation; the
states and the gate arithmetic stay in float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lstm_jax.cells import _matmul, check_sizes

Array = jax.Array
SLSTMCarry = tuple[Array, Array, Array, Array]  # (c, n, m, h), each <float32>[batch, H]
MLSTMCarry = tuple[Array, Array, Array]  # (C <[batch, heads, Dk, Dv]>, n <[batch, heads, Dk]>, m <[batch, heads]>)
FORGET_GATES = ("sigmoid", "exp")


def _check_heads(hidden_features: int, num_heads: int, in_features: int) -> int:
    check_sizes(in_features=in_features, hidden_features=hidden_features)
    if num_heads < 1 or hidden_features % num_heads:
        raise ValueError(f"hidden_features={hidden_features} must divide into num_heads={num_heads} heads")
    return hidden_features // num_heads


class SLSTMCell(nnx.Module):
    r"""sLSTM: scalar memory, exponential gating, normaliser and stabiliser states, heads (xLSTM eq. 8-17).

    With ``R_*`` block-diagonal (head ``k``'s units see only head ``k``'s part of ``h_{t-1}``)::

        z_t  = tanh(x_t W_z + h_{t-1} R_z + b_z)          cell input
        ĩ_t  = x_t W_i + h_{t-1} R_i + b_i                log of the input gate  i_t = exp(ĩ_t)
        f̃_t  = x_t W_f + h_{t-1} R_f + b_f                forget gate  f_t = sigmoid(f̃_t)  (or exp(f̃_t))
        o_t  = sigmoid(x_t W_o + h_{t-1} R_o + b_o)       output gate
        m_t  = max(log f_t + m_{t-1}, ĩ_t)                stabiliser (m_t = ĩ_t where n_{t-1} = 0)
        i'_t = min(exp(ĩ_t - m_t), 1),  f'_t = min(exp(log f_t + m_{t-1} - m_t), 1)
        c_t  = f'_t c_{t-1} + i'_t z_t                    cell state
        n_t  = f'_t n_{t-1} + i'_t                        normaliser
        h_t  = o_t * c_t / n_t                            hidden state, also the output y_t

    Shapes: ``x_t <float>[batch, in]``; carry ``(c, n, m, h)`` each ``<float32>[batch, H]``;
    ``W <[in, 4H]>`` with columns ``[i | f | z | o]`` (each block head-major), ``R <[heads, H/heads, 4 H/heads]>``
    (head ``k``: ``[i | f | z | o]`` columns of that head), ``b <[4H]>``. Initialised as the reference does by
    default: ``R = 0``, forget-gate bias spread over ``[3, 6]`` (remember at first), other biases 0.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        num_heads: int = 1,
        forget_gate: str = "sigmoid",
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
        rngs: nnx.Rngs,
    ):
        if forget_gate not in FORGET_GATES:
            raise ValueError(f"forget_gate must be one of {FORGET_GATES}, got {forget_gate!r}")
        head_size = _check_heads(hidden_features, num_heads, in_features)
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.recurrent_features = hidden_features
        self.output_features = hidden_features
        self.num_heads = num_heads
        self.forget_gate = forget_gate
        self.dtype = dtype
        self.input_kernel = nnx.Param(kernel_init(rngs.params(), (in_features, 4 * hidden_features), param_dtype))
        self.recurrent_kernel = nnx.Param(jnp.zeros((num_heads, head_size, 4 * head_size), param_dtype))
        forget = np.tile(np.linspace(3.0, 6.0, head_size), num_heads)
        bias = np.zeros(4 * hidden_features, np.float32)
        bias[hidden_features : 2 * hidden_features] = forget
        self.bias = nnx.Param(jnp.asarray(bias, param_dtype))

    def initialize_carry(self, batch_shape: tuple[int, ...]) -> SLSTMCarry:
        zeros = jnp.zeros((*batch_shape, self.hidden_features), jnp.float32)
        return (zeros, zeros, zeros, zeros)

    def input_projection(self, x: Array) -> Array:
        """x W + b: <float>[..., in] -> <float32>[..., 4H]."""
        return _matmul(x, self.input_kernel[...], self.dtype) + self.bias[...].astype(jnp.float32)

    def _recurrent_projection(self, h: Array, mask: Array | None) -> Array:
        """h R (block-diagonal): <float32>[batch, H] -> <float32>[batch, 4H] in the ``[i | f | z | o]`` layout."""
        if mask is not None:
            h = h * mask
        heads, head_size = self.num_heads, self.hidden_features // self.num_heads
        per_head = h.reshape(*h.shape[:-1], heads, head_size)
        out = jnp.einsum(
            "...kd,kdg->...kg",
            per_head.astype(self.dtype),
            self.recurrent_kernel[...].astype(self.dtype),
            preferred_element_type=jnp.float32,
        )  # [..., heads, 4 * head]
        out = out.reshape(*h.shape[:-1], heads, 4, head_size)
        return jnp.swapaxes(out, -3, -2).reshape(*h.shape[:-1], 4 * self.hidden_features).astype(jnp.float32)

    def __call__(self, carry: SLSTMCarry, x: Array):
        return self.recurrent_step(carry, self.input_projection(x))

    def recurrent_step(self, carry: SLSTMCarry, projected_x: Array, recurrent_mask: Array | None = None):
        c, n, m, h = carry
        raw = projected_x + self._recurrent_projection(h, recurrent_mask)
        i_raw, f_raw, z_raw, o_raw = jnp.split(raw, 4, axis=-1)
        log_f = jax.nn.log_sigmoid(f_raw) if self.forget_gate == "sigmoid" else f_raw
        # The first step (nothing stored yet) starts the stabiliser at the input gate, as the reference does.
        m_new = jnp.where(n == 0.0, i_raw, jnp.maximum(log_f + m, i_raw))
        i_gate = jnp.minimum(jnp.exp(i_raw - m_new), 1.0)
        f_gate = jnp.minimum(jnp.exp(log_f + m - m_new), 1.0)
        c = f_gate * c + i_gate * jnp.tanh(z_raw)
        n = f_gate * n + i_gate
        h = jax.nn.sigmoid(o_raw) * c / n
        return (c, n, m_new, h), h.astype(self.dtype)


class MLSTMCell(nnx.Module):
    r"""mLSTM: a matrix memory per head with a covariance update (xLSTM eq. 19-27, as in ``mlstm_kernels``).

    Per head, with ``q, k <[Dk]>``, ``v <[Dv]>`` and scalar gates projected from ``x_t`` alone::

        q_t, k_t, v_t = x_t W_q + b_q, x_t W_k + b_k, x_t W_v + b_v
        ĩ_t, f̃_t      = x_t w_i + b_i, x_t w_f + b_f       (scalars per head)
        o_t           = sigmoid(x_t W_o + b_o)
        m_t  = max(log sigmoid(f̃_t) + m_{t-1}, ĩ_t)                   stabiliser
        i'_t = exp(ĩ_t - m_t),  f'_t = exp(log sigmoid(f̃_t) + m_{t-1} - m_t)
        C_t  = f'_t C_{t-1} + i'_t k_t v_t^T                          matrix memory <[Dk, Dv]>
        n_t  = f'_t n_{t-1} + i'_t k_t                                normaliser <[Dk]>
        h̃_t  = (q_t / sqrt(Dk)) C_t / (max(|(q_t / sqrt(Dk)) . n_t|, exp(-m_t)) + 1e-6)
        y_t  = o_t * h̃_t                                              output <[heads * Dv]>

    No state enters the next step's projections, so :meth:`parallel` computes the same outputs and final
    state for a whole sequence at once (``O(T^2)`` memory), and :meth:`chunkwise` does so ``chunk_size`` steps at a
    time.

    Shapes: ``hidden_features = heads * Dv`` (output width), ``Dk = qk_features or Dv``; carry
    ``(C <float32>[batch, heads, Dk, Dv], n <float32>[batch, heads, Dk], m <float32>[batch, heads])``;
    ``W <[in, heads*(2Dk + 2Dv) + 2*heads]>`` with columns ``[q | k | v | o | i | f]``, ``b`` likewise.
    Forget-gate biases start spread over ``[3, 6]`` as in the reference, the others at 0.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        num_heads: int = 1,
        qk_features: int | None = None,
        chunk_size: int = 64,
        epsilon: float = 1e-6,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
        rngs: nnx.Rngs,
    ):
        value_size = _check_heads(hidden_features, num_heads, in_features)
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.output_features = hidden_features
        self.num_heads = num_heads
        self.value_size = value_size
        self.key_size = qk_features or value_size
        self.chunk_size = chunk_size
        self.epsilon = epsilon
        self.dtype = dtype
        widths = self._widths()
        total = sum(widths)
        self.input_kernel = nnx.Param(kernel_init(rngs.params(), (in_features, total), param_dtype))
        bias = np.zeros(total, np.float32)
        bias[total - num_heads :] = np.linspace(3.0, 6.0, num_heads)
        self.bias = nnx.Param(jnp.asarray(bias, param_dtype))

    def _widths(self) -> list[int]:
        heads, key, value = self.num_heads, self.key_size, self.value_size
        return [heads * key, heads * key, heads * value, heads * value, heads, heads]  # q k v o i f

    def initialize_carry(self, batch_shape: tuple[int, ...]) -> MLSTMCarry:
        heads, key, value = self.num_heads, self.key_size, self.value_size
        return (
            jnp.zeros((*batch_shape, heads, key, value), jnp.float32),
            jnp.zeros((*batch_shape, heads, key), jnp.float32),
            jnp.zeros((*batch_shape, heads), jnp.float32),
        )

    def input_projection(self, x: Array) -> Array:
        """x W + b: <float>[..., in] -> <float32>[..., heads*(2Dk + 2Dv) + 2 heads]."""
        return _matmul(x, self.input_kernel[...], self.dtype) + self.bias[...].astype(jnp.float32)

    def _split(self, projected: Array):
        """(q, k, v, o_raw, i_raw, f_raw); q, k <[..., heads, Dk]>, v, o <[..., heads, Dv]>, gates <[..., heads]>."""
        q, k, v, o, i, f = jnp.split(projected, np.cumsum(self._widths())[:-1], axis=-1)
        lead, heads = projected.shape[:-1], self.num_heads
        q, k = (a.reshape(*lead, heads, self.key_size) for a in (q, k))
        v, o = (a.reshape(*lead, heads, self.value_size) for a in (v, o))
        return q / np.sqrt(self.key_size), k, v, o, i, f

    def __call__(self, carry: MLSTMCarry, x: Array):
        return self.recurrent_step(carry, self.input_projection(x))

    def recurrent_step(self, carry: MLSTMCarry, projected_x: Array, recurrent_mask: Array | None = None):
        if recurrent_mask is not None:
            raise ValueError("the mLSTM has no hidden-to-hidden recurrence for recurrent dropout to act on")
        C, n, m = carry
        q, k, v, o, i_raw, f_raw = self._split(projected_x)
        log_f = jax.nn.log_sigmoid(f_raw)
        m_new = jnp.maximum(log_f + m, i_raw)
        f_gate, i_gate = jnp.exp(log_f + m - m_new)[..., None], jnp.exp(i_raw - m_new)[..., None]
        C = f_gate[..., None] * C + i_gate[..., None] * (k[..., :, None] * v[..., None, :])
        n = f_gate * n + i_gate * k
        numerator = jnp.einsum("...d,...dv->...v", q, C)
        denominator = jnp.maximum(jnp.abs(jnp.sum(q * n, axis=-1)), jnp.exp(-m_new)) + self.epsilon
        h = jax.nn.sigmoid(o) * numerator / denominator[..., None]
        h = h.reshape(*h.shape[:-2], self.hidden_features)
        return (C, n, m_new), h.astype(self.dtype)

    def parallel(self, projected: Array, masks: Array, carry: MLSTMCarry) -> tuple[MLSTMCarry, Array]:
        """The whole sequence at once: ``projected <float32>[T, B, W]`` (time-major, :meth:`input_projection`),
        ``masks <bool>[T, B]`` (real steps, right-padded), ``carry`` the initial state. Returns (final carry,
        outputs <dtype>[T, B, H] with zeros at padded steps), equal to running :meth:`recurrent_step` over the
        real steps.

        The decay from step ``s`` to step ``t`` is ``D_ts = exp(F_t - F_s + ĩ_s)`` with ``F`` the running sum of
        ``log sigmoid(f̃)``; the initial state enters as a step before the first with weight ``exp(F_t + m_0)``.
        Padded steps neither decay nor add (``log f = 0``, ``ĩ = -inf``), so the state at the end is the state
        at each row's last real step.
        """
        C0, n0, m0 = carry
        q, k, v, o, i_raw, f_raw = self._split(projected)  # q [T, B, heads, Dk]; gates [T, B, heads]
        real = masks[..., None]
        log_f = jnp.where(real, jax.nn.log_sigmoid(f_raw), 0.0)
        i_raw = jnp.where(real, i_raw, -jnp.inf)
        F = jnp.cumsum(log_f, axis=0)
        time = projected.shape[0]
        causal = (jnp.arange(time)[:, None] >= jnp.arange(time)[None, :])[:, :, None, None]  # [t, s, 1, 1]
        log_D = jnp.where(causal, F[:, None] - F[None, :] + i_raw[None, :], -jnp.inf)  # [t, s, B, heads]
        log_initial = F + m0[None]  # [t, B, heads]
        m = jnp.maximum(jnp.max(log_D, axis=1), log_initial)
        D = jnp.exp(log_D - m[:, None])
        w0 = jnp.exp(log_initial - m)
        scores = jnp.einsum("tbhd,sbhd->tsbh", q, k) * D
        numerator = jnp.einsum("tsbh,sbhv->tbhv", scores, v) + w0[..., None] * jnp.einsum("tbhd,bhdv->tbhv", q, C0)
        qn = jnp.sum(scores, axis=1) + w0 * jnp.einsum("tbhd,bhd->tbh", q, n0)
        denominator = jnp.maximum(jnp.abs(qn), jnp.exp(-m)) + self.epsilon
        h = jax.nn.sigmoid(o) * numerator / denominator[..., None]
        h = jnp.where(real[..., None], h, 0.0).reshape(*h.shape[:-2], self.hidden_features)
        C = jnp.einsum("sbh,sbhd,sbhv->bhdv", D[-1], k, v) + w0[-1][..., None, None] * C0
        n = jnp.einsum("sbh,sbhd->bhd", D[-1], k) + w0[-1][..., None] * n0
        return (C, n, m[-1]), h.astype(self.dtype)

    def chunkwise(self, projected: Array, masks: Array, carry: MLSTMCarry) -> tuple[MLSTMCarry, Array]:
        """:meth:`parallel` chunk by chunk, each chunk starting from the state the previous one ended in: the same
        function in ``O(T * chunk_size)`` memory instead of ``O(T^2)``, for long sequences. The time axis is padded
        to a multiple of ``chunk_size`` with masked steps, which change nothing."""
        chunk_size = self.chunk_size
        time, batch = projected.shape[:2]
        chunks = -(-time // chunk_size)
        padding = chunks * chunk_size - time
        projected = jnp.pad(projected, ((0, padding), (0, 0), (0, 0)))
        masks = jnp.pad(masks, ((0, padding), (0, 0)))

        def step(carry, chunk):
            return self.parallel(*chunk, carry)

        shape = (chunks, chunk_size, batch)
        carry, outputs = jax.lax.scan(
            step, carry, (projected.reshape(*shape, -1), masks.reshape(shape))
        )  # outputs [chunks, chunk_size, B, H]
        return carry, outputs.reshape(chunks * chunk_size, batch, -1)[:time]
