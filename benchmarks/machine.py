"""What every benchmark records beside its figures: the machine, its load, and a warning when it is busy.

A ratio measured while other processes use the cores says little (one run reported 8.5x PyTorch under load
instead of about 1.2x), so each benchmark calls :func:`describe` before and after its timed part and keeps both.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not every platform has it
        return None


def describe() -> dict:
    """Machine and load now; prints a warning to stderr when the 1-minute load average exceeds half the cores."""
    cpus = os.cpu_count() or 1
    load = load_average()
    busy = load is not None and load > 0.5 * cpus
    if busy:
        print(f"warning: the machine is busy (load average {load} on {cpus} CPUs); ratios measured now are "
              "unreliable, rerun when it is idle", file=sys.stderr)  # fmt: skip
    return {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": cpus,
        "load_average_1min": load,
        "busy": busy,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def save_results(out, name: str, results: dict, markdown: str) -> None:
    """Writes ``out/name.json`` and ``out/name.md``, prints the table and says where they went."""
    import json
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
    print(f"results in {out}", file=sys.stderr)


def fresh_folder(base: str, name: str):
    """A new folder ``base/name-<timestamp>`` for a run's results (never the committed benchmarks/results)."""
    from pathlib import Path

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(base) / f"{name}-{stamp}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder
