"""NumPy reference implementations of the cells, written from the papers' equations (float64)."""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def params(cell):
    """The cell's parameters as float64 NumPy arrays."""
    out = {
        "W_x": np.asarray(cell.input_kernel[...], np.float64),
        "W_h": np.asarray(cell.recurrent_kernel[...], np.float64),
        "b": np.zeros(cell.input_kernel[...].shape[1]) if cell.bias is None else np.asarray(cell.bias[...], np.float64),
    }
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


STEPS = {
    "lstm": lstm_step,
    "peephole_lstm": peephole_step,
    "layernorm_lstm": layernorm_lstm_step,
    "gru": gru_step,
    "simple_rnn": simple_step,
}
LSTM_LIKE = ("lstm", "peephole_lstm", "layernorm_lstm")


def initial_state(name, cell):
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
