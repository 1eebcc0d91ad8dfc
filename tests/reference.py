"""NumPy reference implementations of the cells, written from the papers' equations (float64)."""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def params(cell):
    """The cell's parameters as float64 NumPy arrays."""
    out = {
        "W_x": np.asarray(cell.input_kernel[...], np.float64),
        "b": np.zeros(cell.input_kernel[...].shape[1]) if cell.bias is None else np.asarray(cell.bias[...], np.float64),
    }
    if hasattr(cell, "recurrent_kernel"):
        out["W_h"] = np.asarray(cell.recurrent_kernel[...], np.float64)
    for name in ("num_heads", "key_size", "value_size", "forget_gate"):
        if hasattr(cell, name):
            out[name] = getattr(cell, name)
    if hasattr(cell, "peephole_weights"):
        out["p"] = np.asarray(cell.peephole_weights[...], np.float64)
    if hasattr(cell, "recurrent_bias") and cell.recurrent_bias is not None:
        out["b_h"] = np.asarray(cell.recurrent_bias[...], np.float64)
    if getattr(cell, "projection_kernel", None) is not None:
        out["W_r"] = np.asarray(cell.projection_kernel[...], np.float64)
    for name in ("input_norm_scale", "recurrent_norm_scale", "cell_norm_scale", "cell_norm_bias"):
        if hasattr(cell, name):
            out[name] = np.asarray(getattr(cell, name)[...], np.float64)
    return out


def project(p, h):
    """LSTMP (Sak et al. 2014): r_t = W_rm m_t, here h @ W_r."""
    return h @ p["W_r"] if "W_r" in p else h


def lstm_step(p, state, x):
    c, h = state
    H = c.shape[-1]
    W_x, W_h, b = p["W_x"], p["W_h"], p["b"]

    def block(k):
        return x @ W_x[:, k * H : (k + 1) * H] + h @ W_h[:, k * H : (k + 1) * H] + b[k * H : (k + 1) * H]

    i, f, g, o = sigmoid(block(0)), sigmoid(block(1)), np.tanh(block(2)), sigmoid(block(3))
    c = f * c + i * g
    h = project(p, o * np.tanh(c))
    return (c, h), h


def layer_norm(v, gain, bias=0.0, epsilon=1e-5):
    """Ba et al. 2016, eq. 3-4: mu = mean over the H_l units, sigma = sqrt(mean (a - mu)^2); LN = g / sigma * (a - mu)
    + b (epsilon inside the root, as common implementations do)."""
    mu = v.mean()
    sigma = np.sqrt(((v - mu) ** 2).mean() + epsilon)
    return gain / sigma * (v - mu) + bias


def layernorm_lstm_step(p, state, x):
    """Supplementary eq. 20-22: (f i o g) = LN(W_h h; a1, b1) + LN(W_x x; a2, b2) + b; c = s(f) c + s(i) tanh(g);
    h = s(o) tanh(LN(c; a3, b3)). Gate order here is ours, [i | f | g | o]; b1 + b2 + b is the one bias b."""
    c, h = state
    H = c.shape[-1]
    z = layer_norm(h @ p["W_h"], p["recurrent_norm_scale"]) + layer_norm(x @ p["W_x"], p["input_norm_scale"]) + p["b"]
    i, f, g, o = sigmoid(z[:H]), sigmoid(z[H : 2 * H]), np.tanh(z[2 * H : 3 * H]), sigmoid(z[3 * H :])
    c = f * c + i * g
    h = project(p, o * np.tanh(layer_norm(c, p["cell_norm_scale"], p["cell_norm_bias"])))
    return (c, h), h


def peephole_step(p, state, x):
    c_prev, h = state
    H = c_prev.shape[-1]
    W_x, W_h, b, (p_i, p_f, p_o) = p["W_x"], p["W_h"], p["b"], p["p"]

    def block(k):
        return x @ W_x[:, k * H : (k + 1) * H] + h @ W_h[:, k * H : (k + 1) * H] + b[k * H : (k + 1) * H]

    i = sigmoid(block(0) + p_i * c_prev)
    f = sigmoid(block(1) + p_f * c_prev)
    c = f * c_prev + i * np.tanh(block(2))
    o = sigmoid(block(3) + p_o * c)
    h = project(p, o * np.tanh(c))
    return (c, h), h


def gru_step(p, h, x):
    H = h.shape[-1]
    W_x, W_h, b = p["W_x"], p["W_h"], p["b"]
    b_h = p.get("b_h", np.zeros(3 * H))

    def xs(k):
        return x @ W_x[:, k * H : (k + 1) * H] + b[k * H : (k + 1) * H]

    def hs(k):
        return h @ W_h[:, k * H : (k + 1) * H] + b_h[k * H : (k + 1) * H]

    r = sigmoid(xs(0) + hs(0))
    u = sigmoid(xs(1) + hs(1))
    n = np.tanh(xs(2) + r * hs(2))
    h = (1 - u) * n + u * h
    return h, h


def simple_step(p, h, x):
    h = np.tanh(x @ p["W_x"] + h @ p["W_h"] + p["b"])
    return h, h


def slstm_step(p, state, x):
    """xLSTM eq. 8-17 (stabilised) with head-wise block-diagonal R; gate blocks [i | f | z | o]."""
    c, n, m, h = state
    H, heads = c.shape[-1], p["num_heads"]
    size = H // heads
    recurrent = np.concatenate([h[k * size : (k + 1) * size] @ p["W_h"][k] for k in range(heads)])  # per head [4*size]
    recurrent = recurrent.reshape(heads, 4, size).transpose(1, 0, 2).reshape(4 * H)  # to the [i | f | z | o] layout
    raw = x @ p["W_x"] + recurrent + p["b"]
    i_raw, f_raw, z_raw, o_raw = np.split(raw, 4)
    log_f = -np.logaddexp(0.0, -f_raw) if p["forget_gate"] == "sigmoid" else f_raw
    m_new = np.where(n == 0.0, i_raw, np.maximum(log_f + m, i_raw))
    i_gate, f_gate = np.minimum(np.exp(i_raw - m_new), 1.0), np.minimum(np.exp(log_f + m - m_new), 1.0)
    c = f_gate * c + i_gate * np.tanh(z_raw)
    n = f_gate * n + i_gate
    h = sigmoid(o_raw) * c / n
    return (c, n, m_new, h), h


def mlstm_step(p, state, x):
    """xLSTM eq. 19-27 (stabilised), q scaled by 1/sqrt(Dk); projection blocks [q | k | v | o | i | f]."""
    C, n, m = state
    heads, key, value = p["num_heads"], p["key_size"], p["value_size"]
    projected = x @ p["W_x"] + p["b"]
    q, k, v, o, i_raw, f_raw = np.split(projected, np.cumsum([heads * key] * 2 + [heads * value] * 2 + [heads]))
    q, k = q.reshape(heads, key) / np.sqrt(key), k.reshape(heads, key)
    v, o = v.reshape(heads, value), o.reshape(heads, value)
    log_f = -np.logaddexp(0.0, -f_raw)
    m_new = np.maximum(log_f + m, i_raw)
    f_gate, i_gate = np.exp(log_f + m - m_new), np.exp(i_raw - m_new)
    C = f_gate[:, None, None] * C + i_gate[:, None, None] * k[:, :, None] * v[:, None, :]
    n = f_gate[:, None] * n + i_gate[:, None] * k
    numerator = np.einsum("hd,hdv->hv", q, C)
    denominator = np.maximum(np.abs(np.sum(q * n, axis=-1)), np.exp(-m_new)) + 1e-6
    h = (sigmoid(o) * numerator / denominator[:, None]).reshape(-1)
    return (C, n, m_new), h


STEPS = {
    "lstm": lstm_step,
    "peephole_lstm": peephole_step,
    "layernorm_lstm": layernorm_lstm_step,
    "gru": gru_step,
    "simple_rnn": simple_step,
    "slstm": slstm_step,
    "mlstm": mlstm_step,
}
LSTM_LIKE = ("lstm", "peephole_lstm", "layernorm_lstm")


def initial_state(name, cell):
    if name == "slstm":
        return tuple(np.zeros(cell.hidden_features) for _ in range(4))
    if name == "mlstm":
        heads, key, value = cell.num_heads, cell.key_size, cell.value_size
        return np.zeros((heads, key, value)), np.zeros((heads, key)), np.zeros(heads)
    if name in LSTM_LIKE:
        return np.zeros(cell.hidden_features), np.zeros(cell.output_features)
    return np.zeros(cell.hidden_features)


def run_sequence(name, cell, x, reverse=False):
    """Runs one unpadded sequence x <[time, in]>; returns outputs <[time, out]> (original order) and final state."""
    p, step = params(cell), STEPS[name]
    state, outputs = initial_state(name, cell), []
    order = range(len(x) - 1, -1, -1) if reverse else range(len(x))
    for t in order:
        state, y = step(p, state, np.asarray(x[t], np.float64))
        outputs.append(y)
    if reverse:
        outputs = outputs[::-1]
    return np.stack(outputs) if outputs else np.zeros((0, cell.output_features)), state
