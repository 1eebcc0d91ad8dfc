"""The one exception type the command-line entry points turn into a one-line message and exit code 2."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import signal
import sys
import threading


class UserError(Exception):
    """A problem with the user's input, files or settings; the message names it and says what to do."""


class CheckpointWriteError(UserError):
    """Orbax failed to write in the background (a full disk, a quota). Its worker threads are then left
    mid-operation and print tracebacks while the interpreter shuts down, so the entry point ends the process
    at once after the message (everything of ours is already closed; earlier checkpoints are complete)."""


class CheckpointReadError(UserError):
    """A checkpoint that could not be read or used. Orbax's event loop may still hold callbacks that print
    "Event loop is closed" tracebacks while the interpreter shuts down, so the entry point ends the process at once
    after the message, as for :class:`CheckpointWriteError` (nothing of ours is left open by then)."""


def exit_on_user_error(main):
    """Wraps an entry point: UserError -> `error: <message>` on stderr, exit 2; an OSError (permissions, a full
    disk, a file-size limit) -> the same with the system's reason; Ctrl-C or SIGTERM -> exit 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            result = main(*args, **kwargs)
            gc.freeze()  # done: skip the interpreter's final collection over everything still alive (~0.3 s)
            return result
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            if isinstance(error, (CheckpointWriteError, CheckpointReadError)):
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(2)
            sys.exit(2)
        except BrokenPipeError:  # the reader went away (`predict.py --output - | head`): end quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
            sys.exit(141)
        except OSError as error:
            where = f" ({error.filename})" if error.filename else ""
            print(f"error: {error.strerror or error}{where}; free space or fix permissions, then rerun",
                  file=sys.stderr)  # fmt: skip
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper


_interrupted = threading.Event()


def interrupt_on_sigterm() -> None:
    """SIGTERM (what schedulers send before preemption) raises KeyboardInterrupt, like Ctrl-C.

    Python runs the handler wherever the main thread is; inside a garbage-collector callback (JAX has one) or a
    finalizer an exception would be printed with a traceback and dropped. There the handler only remembers the
    signal, and :func:`raise_if_interrupted` (called between prediction batches and before an output replaces
    a file) stops the work at the next check.
    """

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def interrupt_on_ctrl_c() -> None:
    """Ctrl-C as :func:`interrupt_on_sigterm` handles SIGTERM: Python's own handler raises KeyboardInterrupt
    even inside JAX's garbage-collector callback, where it is printed with a traceback and lost."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)


def _interrupt(signum, frame):
    _interrupted.set()
    if not _exception_would_be_dropped(frame):
        raise KeyboardInterrupt


def _exception_would_be_dropped(frame) -> bool:
    """Whether ``frame`` is a finalizer or a garbage-collector callback (whose exceptions Python drops)."""
    if frame is None:
        return False
    code = frame.f_code
    return code.co_name == "__del__" or any(getattr(callback, "__code__", None) is code for callback in gc.callbacks)


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if SIGTERM or Ctrl-C arrived, even when the handler's own exception was dropped."""
    if _interrupted.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def signals_deferred():
    """SIGINT and SIGTERM wait until the block is done (a step of two renames is never cut in half). Python runs
    handlers in the main thread whichever thread the signal reached, so the handlers are swapped, not masked."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived = []
    previous = {number: signal.signal(number, lambda number, frame: arrived.append(number))
                for number in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(arrived):
            signal.raise_signal(number)
