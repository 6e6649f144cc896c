"""Time to the first grid of ``ddpm demo`` in a real browser, and the README's screenshot of the page.

    python benchmarks/demo_first_grid.py [MODEL ...] [--rounds 3] [--screenshot docs/figures/demo.png]

Starts the console script ``ddpm demo MODEL ...`` on a free port, opens the page in Debian's headless Chromium
(Playwright, ``executable_path=/usr/bin/chromium``), clicks Generate with the page's defaults (the first model, its
recommended sampler and steps, 16 images of the default class) and times the click until the grid arrives, several
rounds, each with the next seed. Prints the server's start-up time and each round; the first round includes the
first call's one-off costs. Needs ``pip install -e ".[demo]" playwright`` and ``apt install chromium``.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="models for `ddpm demo` (default: its own, ./models)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--screenshot", default=None, metavar="PNG", help="write a screenshot of the page here")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    server = subprocess.Popen([Path(sys.executable).parent / "ddpm", "demo", *args.models, "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()
        if "serving on" not in line:
            raise SystemExit(line + server.stdout.read())
        print(f"server up in {time.perf_counter() - started:.1f} s")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            previous = None
            for round_ in range(args.rounds):
                seed = page.get_by_label("seed (image i: seed + i)")
                seed.fill(str(16 * round_))
                seed.press("Enter")
                clicked = time.perf_counter()
                page.click("#generate")
                page.wait_for_function("s => { const i = document.querySelector('#samples img'); "
                                       "return i && i.src != s; }", arg=previous, timeout=300_000)
                print(f"round {round_ + 1}: grid of 16 in {time.perf_counter() - clicked:.2f} s "
                      f"({page.locator('#status').inner_text()})")
                previous = page.locator("#samples img").get_attribute("src")
            if args.screenshot:
                page.wait_for_load_state("networkidle")
                page.wait_for_timeout(1000)  # the last frame's images replace the streamed ones
                page.screenshot(path=args.screenshot, full_page=False)
                print(f"wrote {args.screenshot}")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
