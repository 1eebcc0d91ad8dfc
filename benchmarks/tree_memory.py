"""Peak memory of a command and every process it starts (Linux): how the README's test-suite memory is measured.

python benchmarks/tree_memory.py -- python -m pytest -q -n 2
python benchmarks/tree_memory.py -- bash .ci/run

Once a second, the command's process tree is walked through /proc and two sums are taken over it: resident set
size (RSS, which counts a shared library page once in every process mapping it) and proportional set size (PSS,
which splits each shared page between the processes sharing it, so the sum is what the tree occupies). The
peak of each is printed when the command ends, whose exit code this script returns.
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or not Path("/proc/self/smaps_rollup").exists():
        parser.error("give a command after --, on Linux (it reads /proc)")
    process = subprocess.Popen(command)
    peak_rss = peak_pss = 0
    start = time.monotonic()
    while process.poll() is None:
        tree = _tree(process.pid)
        peak_rss = max(peak_rss, sum(_kib(pid, "status", "VmRSS:") for pid in tree))
        peak_pss = max(peak_pss, sum(_kib(pid, "smaps_rollup", "Pss:") for pid in tree))
        time.sleep(args.interval)
    print(f"peak memory of the process tree: {peak_rss / 2**20:.2f} GB resident summed, {peak_pss / 2**20:.2f} GB "
          f"proportional; {time.monotonic() - start:.0f} s; exit code {process.returncode}", file=sys.stderr)
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
