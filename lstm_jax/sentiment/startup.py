"""Imported first by every entry point: Ctrl-C while the libraries load (JAX alone takes seconds) ends the
process quietly with exit code 130, instead of a traceback from the middle of an import.

``cli.run`` puts Python's own handler back once everything is imported, so an interrupt during the work is
handled as the entry points document (nothing half-written, a one-line message).
"""

import os
import signal
import sys


def _interrupted_while_starting(signum, frame):
    sys.stderr.write("interrupted while starting; nothing was done\n")
    os._exit(130)


signal.signal(signal.SIGINT, _interrupted_while_starting)
