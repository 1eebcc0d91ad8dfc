"""The README's picture of serve.py's page: the default model explaining a few statements in headless Chromium.

python benchmarks/serve_screenshot.py [--model exported/default] [--out benchmarks/results/serve-page.png]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser as browser_tools  # noqa: E402
from serve_load import ROOT, free_port  # noqa: E402

STATEMENTS = ["A moving, beautifully acted film.", "not bad at all",
              "I wanted to like it, but the plot is a dull mess."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="exported/default")
    parser.add_argument("--out", default="bench-runs/serve-page.png")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "serve.py", "--model", args.model, "--port", str(port)], cwd=ROOT)
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health").status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        browser, why = browser_tools.chromium()
        if browser is None:
            raise SystemExit(why)
        try:
            for result in browser_tools.ask_page(browser, f"http://127.0.0.1:{port}/", STATEMENTS):
                print(result["label"], [(word, round(value, 3)) for word, value, _ in result["tokens"]])
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(args.out)
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(60)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
