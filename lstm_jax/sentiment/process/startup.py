"""Imported first by every entry point: Ctrl-C while the libraries load (JAX alone takes seconds) ends the
process quietly with exit code 130, instead of a traceback from the middle of an import.

``cli.run`` replaces this handler once everything is imported (``errors.interrupt_on_ctrl_c``), so an interrupt
during the work is handled as the entry points document (nothing half-written, a one-line message).
"""

import contextlib
import os
import signal
import sys
import threading


def _interrupted_while_starting(signum, frame):
    sys.stderr.write("interrupted while starting; nothing was done\n")
    os._exit(130)


signal.signal(signal.SIGINT, _interrupted_while_starting)


@contextlib.contextmanager
def quiet_while_importing():
    """The same quiet exit around an import an entry point makes late (JAX, only when a command needs it): a
    KeyboardInterrupt raised inside a C extension's import aborts the process with a C++ traceback instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _interrupted_while_starting)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def one_cpu_device_per_core() -> None:
    """One XLA CPU device per core, so prediction batches are split over all cores (XLA runs a recurrence's
    small per-step matmuls on one core), unless the native CPU kernel, which uses every core from one device,
    is expected to build here. Must run before JAX starts; an explicit XLA_FLAGS setting wins."""
    from lstm_jax import native  # no JAX: an exported model may never need it

    if native.expected_here():
        return
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        flag = f"--xla_force_host_platform_device_count={os.cpu_count() or 1}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
