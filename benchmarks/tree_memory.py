"""Peak memory of a command and every process it starts (Linux): how the README's test-suite memory is measured.

python benchmarks/tree_memory.py -- python -m pytest -q -n 2
python benchmarks/tree_memory.py -- bash .ci/run

Once a second, the command's process tree is walked through /proc and two sums are taken over it: resident set
size (RSS, which counts a shared library page once in every process mapping it) and proportional set size (PSS,
which splits each shared page between the processes sharing it, so the sum is what the tree occupies). The
peak of each is printed when the command ends, whose exit code this script returns, with the largest processes
at the proportional peak (their share and command line), to show what to shrink.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process readable now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # the process ended meanwhile
                continue
            children.setdefault(parent, []).append(int(entry.name))
    return children


def _tree(root: int) -> list[int]:
    children, pending, tree = _children(), [root], []
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending += children.get(pid, [])
    return tree


def _kib(pid: int, file: str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:  # ended, or not ours to read
        pass
    return 0


def _command_line(pid: int, width: int = 100) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    line = " ".join(" ".join(word.decode(errors="replace").split()) for word in words if word)
    return line if len(line) <= width else line[: width - 3] + "..."


def sample(root: int) -> tuple[int, int, list[tuple[int, int, str]]]:
    """(RSS KiB summed, PSS KiB summed, [(PSS KiB, pid, command line)] largest first) of ``root``'s tree now."""
    rows, rss = [], 0
    for pid in _tree(root):
        rss += _kib(pid, "status", "VmRSS:")
        rows.append((_kib(pid, "smaps_rollup", "Pss:"), pid, _command_line(pid)))
    rows.sort(reverse=True)
    return rss, sum(row[0] for row in rows), rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--top", type=int, default=5, help="processes listed at the proportional peak")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or not Path("/proc/self/smaps_rollup").exists():
        parser.error("give a command after --, on Linux (it reads /proc)")
    process = subprocess.Popen(command)
    peak_rss = peak_pss = 0
    at_peak: list[tuple[int, int, str]] = []
    start = time.monotonic()
    while process.poll() is None:
        rss, pss, rows = sample(process.pid)
        peak_rss = max(peak_rss, rss)
        if pss > peak_pss:
            peak_pss, at_peak = pss, rows
        time.sleep(args.interval)
    print(f"peak memory of the process tree: {peak_rss / 2**20:.2f} GB resident summed, {peak_pss / 2**20:.2f} GB "
          f"proportional; {time.monotonic() - start:.0f} s; exit code {process.returncode}", file=sys.stderr)
    if at_peak:
        print(f"at the proportional peak, {len(at_peak)} processes; the largest:", file=sys.stderr)
        for pss, pid, line in at_peak[: args.top]:
            print(f"  {pss / 2**20:5.2f} GB  pid {pid}  {line}", file=sys.stderr)
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
