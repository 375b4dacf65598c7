"""Check that every image of a demo report loads: ``python -m diffcore_plugins.demo.check outputs/demo/report.html``.

Two checks. The static one always runs: every ``<img src>`` of the page names a file beside it
that Pillow decodes. The browser one runs where a headless Chromium is installed (Debian:
``apt-get install chromium-headless-shell`` or ``chromium``; or set ``DIFFCORE_CHROMIUM``): the
page is opened with ``--dump-dom`` and the counts its own script writes on ``<body>`` once loaded
(see :mod:`diffcore_plugins.demo.report`) must say that every image decoded. Exit status 0 when both
pass (or the browser is absent and the static check passes), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from PIL import Image

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "headless_shell")


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")


def image_sources(page: Path) -> list[str]:
    parser = _Images()
    parser.feed(page.read_text())
    return parser.sources


def static_check(page: Path) -> list[str]:
    """Problems found without a browser: missing or undecodable image files, or no image at all."""
    sources = image_sources(page)
    if not sources:
        return [f"{page} has no images"]
    problems = []
    for src in sources:
        path = page.parent / src
        if not src or "://" in src or src.startswith("/"):
            problems.append(f"image src {src!r} is not a file beside the page")
        elif not path.is_file():
            problems.append(f"image {src!r} does not exist")
        else:
            try:
                with Image.open(path) as im:
                    im.load()
            except Exception as exc:  # noqa: BLE001 - any decoder error is a broken image
                problems.append(f"image {src!r} does not decode: {exc}")
    return problems


def find_browser() -> str | None:
    env = os.environ.get("DIFFCORE_CHROMIUM")
    if env:
        return env
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def browser_check(page: Path, browser: str, timeout: float = 60.0) -> dict[str, Any]:
    """Open ``page`` in headless Chromium; returns ``{"total", "ok", "broken"}`` as the page counted them."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    body = re.search(r"<body([^>]*)>", proc.stdout)
    if proc.returncode != 0 or body is None:
        raise RuntimeError(f"{browser} failed on {page} (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    if "data-images-total" not in attrs:
        raise RuntimeError(f"{page}: the page's load script did not run in {browser} (no data-images-total)")
    return {
        "total": int(attrs["data-images-total"]),
        "ok": int(attrs["data-images-ok"]),
        "broken": attrs.get("data-images-broken", "").split(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("page", type=Path, nargs="?", default=Path("outputs/demo/report.html"))
    ap.add_argument("--require-browser", action="store_true", help="fail when no headless Chromium is found")
    args = ap.parse_args(argv)
    if not args.page.is_file():
        print(f"check: {args.page} does not exist (run `make demo` first)", file=sys.stderr)
        return 1
    problems = static_check(args.page)
    n = len(image_sources(args.page))
    browser = find_browser()
    if browser is None:
        if args.require_browser:
            problems.append("no headless Chromium found (apt-get install chromium-headless-shell)")
        print(f"check: {n} images on disk decode; no headless Chromium here, browser check skipped")
    else:
        try:
            seen = browser_check(args.page, browser)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            problems.append(str(exc))
        else:
            if seen["total"] != n or seen["ok"] != n:
                problems.append(
                    f"Chromium loaded {seen['ok']} of {seen['total']} images (page has {n}); broken: {seen['broken']}"
                )
            else:
                print(f"check: Chromium ({Path(browser).name}) loaded all {n} images of {args.page}")
    for p in problems:
        print(f"check: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
