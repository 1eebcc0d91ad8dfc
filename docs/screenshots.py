"""Screenshots of the built documentation site in headless Chromium, for docs/assets/ (not part of the site).

mkdocs build --strict -d /tmp/site && python docs/screenshots.py /tmp/site [--out docs/assets]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import browser as browser_tools  # noqa: E402

PAGES = {"api-cells.png": "api/cells.html#lstm_jax.cells.LSTMCell", "guide-layers.png": "library/layers.html"}


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one line per file would bury the paths written
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="a folder written by mkdocs build")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "assets")
    args = parser.parse_args()
    handler = functools.partial(QuietHandler, directory=str(args.site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only, a free port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser, why = browser_tools.chromium()
    if browser is None:
        raise SystemExit(why)
    try:
        browser.set_window_size(1600, 1000)
        args.out.mkdir(parents=True, exist_ok=True)
        for name, page in PAGES.items():
            browser.get(f"http://127.0.0.1:{server.server_port}/{page}")
            time.sleep(1)  # the header's title fades when a page opens at an anchor
            browser.save_screenshot(str(args.out / name))
            print(f"wrote {args.out / name}")
    finally:
        browser.quit()
        server.shutdown()


if __name__ == "__main__":
    main()
