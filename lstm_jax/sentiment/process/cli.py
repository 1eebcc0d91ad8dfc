"""What both entry points share: flag parsing (a bad flag is one line on stderr and exit code 2, not a
traceback) and JAX's persistent compilation cache."""

import gc
import re
import signal
import sys
import threading
from pathlib import Path

from absl import app, flags

from lstm_jax.sentiment.data.datasets import default_cache_dir
from lstm_jax.sentiment.errors import interrupt_on_ctrl_c


def run(main) -> None:
    """Runs an entry point's ``main`` with absl and our flag parsing.

    Everything imported by now lives until the process exits, so it is moved out of the garbage collector's
    sight (``gc.freeze``): collections during the run stop re-scanning JAX's and Flax's modules, which
    saves about 0.4 s of the tutorial job's 6.
    """
    _ignore_closed_event_loop_reports()
    gc.freeze()
    # A file-size limit (ulimit -f) then fails the write with an OSError we report, instead of killing us.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def main_stopping_on_ctrl_c(argv):
        # startup.py's quiet exit lasts until main begins: a KeyboardInterrupt during absl's flag parsing
        # escaped with a traceback (once the imports got faster, Ctrl-C at 0.2 s landed there).
        interrupt_on_ctrl_c()
        return main(argv)

    app.run(main_stopping_on_ctrl_c, flags_parser=parse_flags)


def _ignore_closed_event_loop_reports() -> None:
    """When a checkpoint read fails, orbax closes its event loop while tensorstore callbacks still post to it;
    each then prints "RuntimeError: Event loop is closed" with a traceback after our one-line error. Only that
    report is dropped; every other exception is reported as before."""

    def closed_loop(error) -> bool:
        return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"

    excepthook, unraisablehook, thread_hook = sys.excepthook, sys.unraisablehook, threading.excepthook
    sys.excepthook = lambda kind, error, trace: None if closed_loop(error) else excepthook(kind, error, trace)
    sys.unraisablehook = lambda report: None if closed_loop(report.exc_value) else unraisablehook(report)
    threading.excepthook = lambda report: None if closed_loop(report.exc_value) else thread_hook(report)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with its errors (unknown config keys, wrong types, missing config files) made short."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as error:  # ml_collections: a key the config does not have
        key = str(error).strip("'\"")
        message = f"unknown config key {key!r}; see the config file for the keys it accepts"
    except flags.Error as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = "; ".join(lines[:1] + [line for line in lines if "Errno" in line][:1])
    except Exception as error:  # absl's own flags fail with flags.Error: this is a config file failing to load
        message = _config_file_error(error)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _config_file_error(error: Exception) -> str:
    """One line for a ``--config`` file that ml_collections could not load (missing, a syntax error, raising)."""
    if isinstance(error, SyntaxError):
        return (f"config file {error.filename} has a syntax error at line {error.lineno} ({error.msg}); fix it or "
                "choose one of configs/*.py")  # fmt: skip
    if isinstance(error, OSError):
        reason = next((line.strip() for line in str(error).splitlines() if "Errno" in line), str(error))
        missing = re.search(r"No such file or directory: '(.*)'", reason)
        if missing:  # as train.py says it when no override made ml_collections load the file first
            return f"config file {missing.group(1)} does not exist; choose one of configs/*.py"
        return f"cannot load the config file ({reason.splitlines()[0]}); choose one of configs/*.py"
    first = (str(error).splitlines() or [""])[0]
    return f"the config file failed to load ({type(error).__name__}: {first}); fix it or choose one of configs/*.py"


def require_local(**paths: str | None) -> None:
    """A one-line error for any flag (``--name``) whose value is a URL such as ``gs://bucket/run``."""
    from lstm_jax.sentiment.files import local_path

    for flag, path in paths.items():
        if path:
            local_path(path, f"--{flag}")


def enable_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache, so a second run of the same job skips compiling ("off" = none)."""
    if directory == "off":
        return
    import jax  # here, so an entry point that runs an ONNX model never imports JAX

    path = Path(directory or default_cache_dir() / "jax").expanduser()
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # our steps compile in < 1 s each
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
