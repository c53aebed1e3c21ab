"""Open a local HTML file in headless Chromium (Debian's ``chromium`` package): the DOM after its scripts ran,
the console messages it printed, a screenshot; and what a plotly figure drew in that DOM."""
from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--hide-scrollbars", "--virtual-time-budget=10000"]
# with --enable-logging=stderr --v=0 every console message (log, warn, error, uncaught exception) is one such line
CONSOLE = re.compile(r":CONSOLE[:(]")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("headless Chromium is absent (Debian: apt-get install chromium)")


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def render(page: Path, tmp: Path) -> tuple[str, list[str]]:
    """The DOM once the page's scripts ran, and the console messages they printed."""
    out = _run(["--enable-logging=stderr", "--v=0", "--dump-dom", page.resolve().as_uri()], tmp / "profile-dom")
    return out.stdout, [line for line in out.stderr.splitlines() if CONSOLE.search(line)]


def screenshot(page: Path, png: Path, size: str = "1700,1300") -> Path:
    _run([f"--window-size={size}", f"--screenshot={png}", page.resolve().as_uri()], png.parent / f"profile-{png.stem}")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return png


class _Subplots(HTMLParser):
    """Per plotly subplot (``<g class="subplot xy">``): the drawn lines and filled bands inside it."""

    def __init__(self):
        super().__init__()
        self.stack: list[str | None] = []  # the subplot each open <g> belongs to
        self.drawn: dict[str, dict[str, int]] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        current = next((s for s in reversed(self.stack) if s), None)
        if tag == "g":
            name = classes[1] if classes[:1] == ["subplot"] and len(classes) > 1 else None
            if name:
                self.drawn.setdefault(name, {"lines": 0, "bands": 0})
            self.stack.append(name)
        elif tag == "path" and current and len(attrs.get("d") or "") > 3:
            if "js-line" in classes:
                self.drawn[current]["lines"] += 1
            elif "js-fill" in classes:
                self.drawn[current]["bands"] += 1

    def handle_endtag(self, tag):
        if tag == "g" and self.stack:
            self.stack.pop()


def drawn_subplots(dom: str) -> dict[str, dict[str, int]]:
    """``{"xy": {"lines": 2, "bands": 2}, "x2y2": ...}``: what plotly drew in each subplot of the DOM."""
    parser = _Subplots()
    parser.feed(dom)
    return parser.drawn
