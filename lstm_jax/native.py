"""The CPU LSTM and GRU kernels of ``csrc/lstm_cpu.cc``, reached through XLA's FFI (``jax.ffi``).

XLA:CPU runs each time step's small ``[B, H] x [H, 4H]`` matmul on one core. The kernel instead gives each
thread of XLA's intra-op pool its own rows of the batch for the whole sequence (rows never interact), so
every core works inside the recurrence with no synchronisation between steps; each step's input projection
runs there too. The weight and input gradients stay in XLA, as large matmuls (:mod:`lstm_jax.fused`).

It is compiled on first use with the machine's C++ compiler (``$CXX``, else ``c++``, ``g++`` or ``clang++``)
for this CPU, against the FFI headers of the installed jaxlib, and cached in ``$LSTM_JAX_CACHE`` (default
``~/.cache/lstm_jax/native``) under a key of source, flags, jax version and CPU. Where that fails (no
compiler, no headers), :func:`unavailable_reason` says why and ``backend="auto"`` keeps the XLA recurrence;
``LSTM_JAX_NATIVE=0`` turns the kernel off. ``python -m lstm_jax.native`` builds it and says which.
JAX is imported only when the kernel is built or called, so :func:`expected_here` can run before JAX starts.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile

import numpy as np

SOURCE = pathlib.Path(__file__).parent / "csrc" / "lstm_cpu.cc"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
TARGETS = {
    "lstm_forward": "LstmForward",
    "lstm_forward_save": "LstmForwardSave",
    "lstm_backward": "LstmBackward",
    "gru_forward": "GruForward",
    "gru_forward_save": "GruForwardSave",
    "gru_backward": "GruBackward",
}
_PREFIX = "lstm_jax_"


class Unavailable(RuntimeError):
    """The kernel cannot be built or loaded here; the message says why in one line."""


def _cache_dir() -> pathlib.Path:
    if os.environ.get("LSTM_JAX_CACHE"):
        return pathlib.Path(os.environ["LSTM_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "lstm_jax" / "native"


def _find_compiler() -> str | None:
    return next((shutil.which(name) for name in (os.environ.get("CXX"), "c++", "g++", "clang++")
                 if name and shutil.which(name)), None)  # fmt: skip


def _turned_off() -> bool:
    return os.environ.get("LSTM_JAX_NATIVE", "1") == "0"


def expected_here() -> bool:
    """Whether the kernel should build here (not turned off, a compiler found), without importing JAX."""
    return not _turned_off() and _find_compiler() is not None


def _cpu_key() -> str:
    """The CPU's model and features: -march=native code is for this CPU only (a shared home may see others)."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
        return "".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() + platform.machine()


def build() -> pathlib.Path:
    """The compiled library's path, compiling it if this source, compiler, jax and CPU have none cached yet."""
    import jax

    compiler = _find_compiler()
    if compiler is None:
        raise Unavailable("no C++ compiler found (install g++ or set CXX)")
    include = jax.ffi.include_dir()
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), compiler, *FLAGS, jax.__version__, _cpu_key()]).encode()
    ).hexdigest()[:16]
    library = _cache_dir() / f"lstm_cpu-{key}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        built = pathlib.Path(scratch) / library.name
        command = [compiler, *FLAGS, f"-I{include}", str(SOURCE), "-o", str(built)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise Unavailable(f"compiling {SOURCE.name} failed: {error}") from None
        if result.returncode != 0:
            first = next((ln for ln in result.stderr.splitlines() if "error" in ln), result.stderr.strip()[:200])
            raise Unavailable(f"compiling {SOURCE.name} with {compiler} failed: {first}")
        os.replace(built, library)  # whole or absent, even with several processes building at once
    return library


@functools.cache
def unavailable_reason() -> str | None:
    """Why the kernel cannot run in this process, or ``None`` once it is built, loaded and registered."""
    import jax

    if _turned_off():
        return "LSTM_JAX_NATIVE=0 turned it off"
    try:
        library = ctypes.cdll.LoadLibrary(str(build()))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(_PREFIX + target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    except (Unavailable, OSError, AttributeError) as error:
        return str(error)
    return None


def _call(target: str, shapes: list[tuple[int, ...]], *args):
    import jax

    if (reason := unavailable_reason()) is not None:  # also registers the targets on first use
        raise Unavailable(f"the native CPU kernel is unavailable: {reason}")
    outputs = [jax.ShapeDtypeStruct(shape, np.float32) for shape in shapes]
    return jax.ffi.ffi_call(_PREFIX + target, outputs, vmap_method="sequential")(*args)


def lstm_forward(x, input_kernel, bias, recurrent_kernel, mask, c0, h0, *, save: bool):
    """``y, c, h`` (and with ``save`` the backward's ``c_prev, h_prev, gates, tanh_c``), all float32."""
    steps, batch, _ = x.shape
    width = recurrent_kernel.shape[1]
    seq, state = (steps, batch, width // 4), (batch, width // 4)
    shapes = [seq, state, state] + ([seq, seq, (steps, batch, width), seq] if save else [])
    target = "lstm_forward_save" if save else "lstm_forward"
    return _call(target, shapes, x, input_kernel, bias, recurrent_kernel, mask, c0, h0)


def lstm_backward(d_outputs, recurrent_kernel, mask, c_prev, gates, tanh_c, d_c_final, d_h_final):
    """``dz, d_c0, d_h0``: the gate pre-activations' gradient ``<[T, B, 4H]>`` and the initial carry's."""
    shapes = [gates.shape, d_c_final.shape, d_h_final.shape]
    args = (d_outputs, recurrent_kernel, mask, c_prev, gates, tanh_c, d_c_final, d_h_final)
    return _call("lstm_backward", shapes, *args)


def gru_forward(x, input_kernel, bias, recurrent_kernel, recurrent_bias, mask, h0, *, save: bool):
    """``y, h`` (and with ``save`` the backward's ``h_prev``, ``gates [r | u | n]`` and ``zh_n = h W_hn + b_hn``)."""
    steps, batch, _ = x.shape
    width = recurrent_kernel.shape[1]
    seq, state = (steps, batch, width // 3), (batch, width // 3)
    shapes = [seq, state] + ([seq, (steps, batch, width), seq] if save else [])
    target = "gru_forward_save" if save else "gru_forward"
    return _call(target, shapes, x, input_kernel, bias, recurrent_kernel, recurrent_bias, mask, h0)


def gru_backward(d_outputs, recurrent_kernel, mask, h_prev, gates, zh_n, d_h_final):
    """``dzx, dzh, d_h0``: the gradients of ``x W_x + b`` and ``h W_h + b_h`` ``<[T, B, 3H]>``, and of ``h0``."""
    shapes = [gates.shape, gates.shape, d_h_final.shape]
    return _call("gru_backward", shapes, d_outputs, recurrent_kernel, mask, h_prev, gates, zh_n, d_h_final)


if __name__ == "__main__":
    reason = unavailable_reason()
    print(f"lstm_jax native CPU kernel: {'built and loaded, ' + str(build()) if reason is None else reason}")
    sys.exit(0 if reason is None else 1)
