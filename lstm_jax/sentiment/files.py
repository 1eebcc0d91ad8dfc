"""Reading what users have and writing without losing anything: the job's file handling in one place.

Reading: a byte-order mark selects the encoding (UTF-8, UTF-16 or UTF-32, as Excel and Windows Notepad
write them); without one the text is UTF-8. Undecodable bytes become U+FFFD and the line is counted.
Lines are read in bounded pieces: a line longer than ``MAX_LINE_BYTES`` keeps its first ``MAX_LINE_BYTES``
(far more than ``max_len`` tokens) and the rest is skipped without being held in memory.

Writing (:class:`SafeOutput`): ``-`` is standard output; an output that is the input (however spelled,
links resolved) is refused; an existing device or FIFO is written in place (never replaced by a file);
a symbolic link writes through to its target (the link stays); a regular file is written to a temporary
file beside it and renamed over it only when complete, keeping the mode of the file it replaces (new
files get the usual mode from the umask). An interrupted or failed write leaves no temporary file.
An output inside a folder the command reads (the model, the work directory) is refused.

Publishing a folder (:func:`publish_folder`): a complete folder written under a temporary name moves to its
place in one step that never replaces what another process put there meanwhile, and a replaced folder is
swapped out atomically: a signal or a crash at any moment leaves the old folder or the new one in place.
"""

from __future__ import annotations

import codecs
import ctypes
import errno
import fcntl
import glob
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from lstm_jax.sentiment.errors import UserError, raise_if_interrupted, signals_deferred

MAX_LINE_BYTES = 1 << 20  # 1 MiB per line: about 150,000 words, far past any max_len
_BOMS = [  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
]


def sniff_encoding(head: bytes) -> tuple[str, int]:
    """(encoding, length of its byte-order mark) for a file starting with ``head``; UTF-8 without a mark,
    unless the zero bytes show UTF-16 or UTF-32 written without one (text never holds NUL characters, and
    ASCII in UTF-16 LE reads ``t\\0e\\0``: as UTF-8 it would be predicted as NUL-riddled text)."""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding, len(bom)
    if len(head) == 4 and b"\0" in head:
        zero = [byte == 0 for byte in head]
        patterns = {(False, True, True, True): "utf-32-le", (True, True, True, False): "utf-32-be",
                    (False, True, False, True): "utf-16-le", (True, False, True, False): "utf-16-be"}  # fmt: skip
        if tuple(zero) in patterns:
            return patterns[tuple(zero)], 0
    return "utf-8", 0


def file_encoding(path: Path) -> str:
    """The Python codec that reads ``path`` with its byte-order mark removed."""
    with open(path, "rb") as handle:
        encoding, bom = sniff_encoding(handle.read(4))
    # utf-8-sig drops a mark if there is one; utf-16 / utf-32 read the mark and take the byte order from it
    # (without a mark, the byte order sniffed from the zero bytes).
    return "utf-8-sig" if encoding == "utf-8" else encoding[:6] if bom else encoding


def _bounded_lines(stream) -> Iterator[bytes]:
    """Byte lines of at most MAX_LINE_BYTES; the rest of a longer line is read and dropped in pieces."""
    while True:
        line = stream.readline(MAX_LINE_BYTES)
        if not line:
            return
        if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
            while True:
                rest = stream.readline(MAX_LINE_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
        yield line


def read_lines(stream) -> Iterator[tuple[str, int, bool]]:
    """``(line, bytes read, had undecodable bytes)`` from a binary stream, honouring a byte-order mark."""
    head = stream.read(4)
    encoding, bom = sniff_encoding(head)
    if encoding.startswith(("utf-16", "utf-32")):
        decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        text = decoder.decode(head[bom:])
        for chunk in iter(lambda: stream.read(1 << 16), b""):
            text += decoder.decode(chunk)
            *lines, text = text.split("\n")
            for line in lines:
                yield line[: MAX_LINE_BYTES // 2], len(line.encode(encoding)), "\ufffd" in line
        text += decoder.decode(b"", final=True)
        if text:
            yield text[: MAX_LINE_BYTES // 2], len(text.encode(encoding)), "\ufffd" in text
        return
    first = True
    for raw in _bounded_lines(_Prepend(head, stream)):
        size = len(raw)
        if first and bom:
            raw, first = raw[bom:], False
        try:
            yield raw.decode("utf-8"), size, False
        except UnicodeDecodeError:
            yield raw.decode("utf-8", errors="replace"), size, True


class _Prepend:
    """A binary stream with some bytes already read put back in front (for readline)."""

    def __init__(self, head: bytes, stream):
        self.head, self.stream = head, stream

    def readline(self, limit: int) -> bytes:
        if self.head:
            newline = self.head.find(b"\n")
            if newline >= 0:
                line, self.head = self.head[: newline + 1], self.head[newline + 1 :]
                return line
            line, self.head = self.head, b""
            return line + self.stream.readline(limit - len(line))
        return self.stream.readline(limit)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_our_stdout(path: str) -> bool:
    """Whether ``path`` names the very file our standard output is (same device and inode): ``/dev/stdout``, a link
    to ``/proc/self/fd/1``... Writing it as stdout keeps what a shell redirection (``>> log``) set up."""
    try:
        ours, named = os.fstat(sys.stdout.fileno()), os.stat(path)
    except (OSError, ValueError, AttributeError):  # no such path, or no real stdout (e.g. captured)
        return False
    return (ours.st_dev, ours.st_ino) == (named.st_dev, named.st_ino)


class SafeOutput:
    """``with SafeOutput(path, inputs=[...]) as handle:`` writes a text file safely (see the module docstring)."""

    def __init__(self, path: str | Path, inputs: tuple = (), folders: tuple = ()):
        self.path = str(path)
        self._temporary = None
        if self.path == "-" or _is_our_stdout(self.path):  # e.g. --output /dev/stdout >> app.log: append, in place
            self.path = "-"
            return
        target = Path(os.path.realpath(self.path))  # a symbolic link writes through to its target
        for source in inputs:
            if source != "-" and target.exists() and Path(source).exists() and os.path.samefile(source, target):
                raise UserError(f"output {self.path} is the input file {source}; choose another --output")
        for folder in folders:
            if folder and is_within(target, Path(folder)):
                raise UserError(f"output {self.path} lies inside {folder}, which this command reads; write the "
                                "predictions outside it")  # fmt: skip
        if target.is_dir():
            raise UserError(f"output {self.path} is a directory; give a file path such as {target / 'predictions.txt'}")
        if not target.parent.is_dir():
            raise UserError(f"the folder of output {self.path} does not exist; create it or choose another --output")
        self.target = target
        self.in_place = target.exists() and not stat.S_ISREG(target.stat().st_mode)  # a device or FIFO
        if not self.in_place and not os.access(target.parent, os.W_OK):
            raise UserError(f"cannot write in the folder of output {self.path}; check its permissions")

    def __enter__(self):
        if self.path == "-":
            self.handle = open(sys.stdout.fileno(), "w", encoding="utf-8", newline="", closefd=False)
        elif self.in_place:
            self.handle = open(self.target, "w", encoding="utf-8", newline="")
        else:
            _remove_stale_temporaries(self.target)
            # The name is kept before the file exists: a signal's KeyboardInterrupt inside __enter__ (then no
            # __exit__ runs) finds it here, wherever it lands, and the file is removed.
            self._temporary = str(self.target.parent / f".{self.target.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
            try:
                descriptor = os.open(self._temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                self.handle = open(descriptor, "w", encoding="utf-8", newline="")
            except BaseException:
                self._discard()
                raise
        return self.handle

    def _discard(self) -> None:
        if self._temporary is not None and os.path.exists(self._temporary):
            os.unlink(self._temporary)

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self.handle.close()
            if kind is None:
                raise_if_interrupted()  # a SIGTERM whose exception got lost: still no output
            if self._temporary is not None and kind is None:
                mode = self.target.stat().st_mode & 0o7777 if self.target.exists() else 0o666 & ~umask()
                os.chmod(self._temporary, mode)
                os.replace(self._temporary, self.target)
        finally:
            self._discard()


def _remove_stale_temporaries(target: Path) -> None:
    """Deletes ``.<name>.<pid>.<random>.tmp`` files that a killed run (SIGKILL, power loss) left beside
    ``target``: ours by name and owner, and their process is gone."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"(\d+)\.[A-Za-z0-9_]+\.tmp")
    for path in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        match = pattern.fullmatch(path.name)
        try:
            info = path.lstat() if match else None
            if info is None or info.st_uid != os.getuid() or not stat.S_ISREG(info.st_mode):
                continue
            os.kill(int(match.group(1)), 0)  # raises ProcessLookupError when that process is gone
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (OSError, OverflowError):  # alive but not ours to signal, or unreadable: leave it
            continue


def is_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, links resolved on both sides."""
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2


def _renameat2(source: Path, target: Path, flag: int) -> bool:
    """Linux's ``renameat2`` with ``flag``: True when done, False when this system or file system lacks it."""
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flag) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(target))


def publish_folder(staging: Path, output: Path, replaceable: Callable[[Path], bool]) -> None:
    """Moves the complete folder ``staging`` to ``output`` (both absolute, in one parent folder).

    A new ``output`` is created by the move itself, so of concurrent writers exactly one wins; an existing
    ``output`` is swapped with ``staging`` atomically and the displaced folder deleted, but only when
    ``replaceable(displaced)`` says it may be (checked on what was actually displaced, so a folder that appeared
    or changed meanwhile is put back, untouched). Raises :class:`UserError` when ``output`` may not be replaced.
    """
    appeared = UserError(f"output {output} appeared while exporting and was left as it is; choose a new --output")
    with signals_deferred():
        if not os.path.lexists(output):
            try:
                if not _renameat2(staging, output, _RENAME_NOREPLACE):
                    os.mkdir(output)  # exclusive: of two writers only one creates it; ours is then empty
                    os.rename(staging, output)
            except FileExistsError:
                raise appeared from None
            return
        displaced = staging if _renameat2(staging, output, _RENAME_EXCHANGE) else _swap_by_renames(staging, output)
        try:
            if not replaceable(displaced):
                raise appeared
        except BaseException:  # refused, or the check itself failed: what was there goes back, untouched
            _swap_back(displaced, output)
            raise
        shutil.rmtree(displaced)


def _swap_by_renames(staging: Path, output: Path) -> Path:
    """The swap where ``renameat2`` is missing (signals are deferred by the caller); returns the old folder."""
    aside = staging.with_name(staging.name + ".old")
    os.rename(output, aside)
    try:
        os.rename(staging, output)
    except OSError:
        os.rename(aside, output)
        raise
    return aside


def _swap_back(displaced: Path, output: Path) -> None:
    if not _renameat2(displaced, output, _RENAME_EXCHANGE):
        os.rename(output, displaced.with_name(displaced.name + ".new"))
        os.rename(displaced, output)
        shutil.rmtree(displaced.with_name(displaced.name + ".new"))


def local_path(path: str, flag: str) -> str:
    """``path`` unchanged, or a one-line error for a URL (``gs://``, ``s3://``): checkpoints, exports and
    predictions are read and written on local (or mounted) file systems only."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path or ""):
        raise UserError(f"{flag} {path} is a URL; lstm_jax reads and writes local folders only: use a local or "
                        "mounted path (e.g. gcsfuse) and copy the results")  # fmt: skip
    return path


class WorkdirLock:
    """``with WorkdirLock(workdir):`` one training run per work directory.

    An OS lock (``flock``) on ``workdir/.lock``: a second writer fails at once naming the holder's process id;
    the lock goes with its process, so a killed run never blocks the next one. Readers (predict) take no lock.
    """

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / ".lock"

    def __enter__(self):
        self._handle = open(self.path, "a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "unknown"
            self._handle.close()
            raise UserError(
                f"workdir {self.path.parent} is in use by another training run (process {holder}); "
                "wait for it to finish or choose another --workdir"
            ) from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"{os.getpid()}\n")
        self._handle.flush()
        return self

    def __exit__(self, *exception) -> None:
        self._handle.close()  # closing releases the lock
