"""Full-page screenshots of every page of the site, as readers meet it.

Builds the site (``mkdocs build --strict``), serves it on localhost and drives headless
Chromium (Debian's ``chromium`` package) through the DevTools protocol over a pipe, with
the standard library only: every page at 1400 px and 420 px wide (the phone width
emulated as a mobile viewport), in the light and the dark scheme. The scheme is the
reader's system preference (``prefers-color-scheme``, set when the browser starts, one
browser per scheme), which Material's palette follows on a first visit; each shot checks
that the page shows the palette asked for (``slate`` for dark). Run it from the
repository root, with the ``docs`` extra installed::

    python docs/scripts/screenshots.py --out /tmp/shots
    python docs/scripts/screenshots.py --out /tmp/shots --pages index,performance

It writes ``OUT/<page>-<width>-<scheme>.png`` (``api-RepeatedBlock-420-dark.png``, ...)
and prints, per page, the height of each shot and the code blocks whose text is wider
than their box (clipped code, which scrolls), so that a run says what to look at.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]
WIDTHS = (1400, 420)
# The reader's system preference, from the browser's start: Blink's preferredColorScheme
# (0 dark, 1 light) is what prefers-color-scheme reports from a page's first script on
# (emulating the media feature per page alone can come too late for Material's script).
SCHEME_FLAGS = {
    "light": ["--blink-settings=preferredColorScheme=1"],
    "dark": ["--force-dark-mode", "--blink-settings=preferredColorScheme=0"],
}
SCHEMES = ("light", "dark")
# What the page reports after it settled: its height, its scheme and its clipped code.
PROBE = """(() => {
  const clipped = [...document.querySelectorAll('.md-typeset pre > code')]
    .filter(c => c.scrollWidth > c.clientWidth + 1).length;
  const tables = [...document.querySelectorAll('.md-typeset__scrollwrap')]
    .filter(t => t.scrollWidth > t.clientWidth + 1).length;
  return JSON.stringify({
    height: document.documentElement.scrollHeight,
    scheme: document.body.getAttribute('data-md-color-scheme'),
    clipped: clipped, scrolling_tables: tables,
  });
})()"""


class Browser:
    """Headless Chromium, spoken to in DevTools protocol messages over fds 3 and 4."""

    def __init__(self, chromium: str, scheme: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="shots-profile-")
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()

        def child_fds() -> None:  # in the child: commands on fd 3, replies on fd 4
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self.process = subprocess.Popen(
            [
                chromium,
                *CHROMIUM_FLAGS,
                *SCHEME_FLAGS[scheme],
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            pass_fds=(3, 4),
            preexec_fn=child_fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._next_id = 0
        self.session = ""

    def _messages(self, timeout: float) -> Iterator[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                yield json.loads(raw)
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raise TimeoutError(f"no reply from chromium in {timeout} s")

    def send(self, method: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        """Send one command (to the page's session once attached); return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        for reply in self._messages(timeout):
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
        raise AssertionError("unreachable")

    def wait_for(self, event: str, timeout: float = 60.0) -> None:
        """Read messages until ``event`` arrives."""
        for message in self._messages(timeout):
            if message.get("method") == event:
                return

    def open_page(self) -> None:
        """Open one tab and attach to it."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.send("Page.enable")
        # No network here: the theme's web fonts would keep the load event waiting on a
        # request that cannot succeed, so they fail at once (the system fonts stand in).
        self.send("Network.enable")
        self.send("Network.setBlockedURLs", urls=["*fonts.googleapis.com*", "*fonts.gstatic.com*"])

    def close(self) -> None:
        """End the browser and remove its profile."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def shoot(browser: Browser, url: str, width: int, scheme: str, out: Path) -> dict[str, Any]:
    """One full-page screenshot of ``url``; return what the page reported."""
    mobile = width < 600
    want = "slate" if scheme == "dark" else "default"
    browser.send(
        "Emulation.setEmulatedMedia",
        features=[{"name": "prefers-color-scheme", "value": scheme}],
    )
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        width=width,
        height=900,
        deviceScaleFactor=1,
        mobile=mobile,
    )
    # A first visit: Material keeps the palette a page chose in localStorage (under the
    # site's scope) and prefers it to the media feature, so it is removed, once the old
    # page has seen the new media feature (and maybe stored its choice).
    time.sleep(0.3)
    browser.send("Runtime.evaluate", expression="try { localStorage.clear() } catch (e) {}")
    # A query of its own for every shot: navigating to the URL already shown may not
    # load the page again (the static server ignores the query).
    url = f"{url}?shot={width}-{scheme}"
    browser.send("Page.navigate", url=url)
    # Wait until the new page has loaded and Material's scripts have set the palette and
    # wrapped the tables (polled: a load event can pass while a reply is awaited).
    deadline = time.monotonic() + 15
    toggle_at = time.monotonic() + 3
    toggled = False
    while True:
        time.sleep(0.3)
        reply = browser.send(
            "Runtime.evaluate",
            expression=f"document.readyState !== 'loading' && location.href === {url!r}",
            returnByValue=True,
        )
        if reply["result"].get("value") is True:
            reply = browser.send("Runtime.evaluate", expression=PROBE, returnByValue=True)
            probe = json.loads(reply["result"]["value"])
            if probe["scheme"] == want:
                break
            if not toggled and time.monotonic() > toggle_at:
                # Material kept a palette stored by an earlier page: choose the scheme
                # with the page's own palette toggle, as a reader would.
                media = f"(prefers-color-scheme: {scheme})"
                browser.send(
                    "Runtime.evaluate",
                    expression=f"document.querySelector('input[data-md-color-media=\"{media}\"]')"
                    ".click()",
                )
                toggled = True
        if time.monotonic() > deadline:
            state = browser.send(
                "Runtime.evaluate",
                expression="document.readyState + ' ' + location.href + ' ' + "
                "document.body.getAttribute('data-md-color-scheme') + ' dark media: ' + "
                "matchMedia('(prefers-color-scheme: dark)').matches + ' stored: ' + "
                "localStorage.getItem('/.__palette')",
                returnByValue=True,
            )["result"].get("value")
            raise RuntimeError(f"{url} at {width} px, {scheme}: the page did not settle: {state}")
    time.sleep(0.3)
    probe = json.loads(
        browser.send("Runtime.evaluate", expression=PROBE, returnByValue=True)["result"]["value"]
    )
    height = min(int(probe["height"]), 16000)
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        width=width,
        height=height,
        deviceScaleFactor=1,
        mobile=mobile,
    )
    time.sleep(0.2)
    shot = browser.send(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    )
    out.write_bytes(base64.b64decode(shot["data"]))
    return {**probe, "toggled": toggled}


def pages_of(site: Path) -> list[str]:
    """Every page of the built site, as its path below the root (``""`` is the home)."""
    pages = []
    for index in sorted(site.rglob("index.html")):
        relative = index.parent.relative_to(site).as_posix()
        if relative == "." or not relative.startswith(("assets", "search")):
            pages.append("" if relative == "." else relative)
    return pages


def main(argv: list[str] | None = None) -> int:
    """Build, serve, shoot every page; print a line per page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/shots"), help="where to write")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the browser")
    parser.add_argument(
        "--pages", default="", help="comma-separated pages (index, performance, api/...)"
    )
    parser.add_argument("--site", type=Path, help="an already built site (skip the build)")
    args = parser.parse_args(argv)
    if not Path(args.chromium).is_file():
        parser.error(f"--chromium: no browser at {args.chromium} (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    site = args.site
    if site is None:
        site = Path(tempfile.mkdtemp(prefix="shots-site-"))
        env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
        subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", site],
            cwd=ROOT,
            check=True,
            env=env,
        )
    handler = functools.partial(QuietHandler, directory=str(site))
    with socketserver.TCPServer(("127.0.0.1", 0), handler) as server:
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        wanted = [p.strip() for p in args.pages.split(",") if p.strip()]
        pages = [p for p in pages_of(site) if not wanted or (p or "index") in wanted]
        results: dict[str, list[str]] = {}
        for scheme in SCHEMES:  # one browser per scheme, the preference fixed at its start
            browser = Browser(args.chromium, scheme)
            try:
                browser.open_page()
                browser.send("Page.navigate", url=f"http://127.0.0.1:{port}/")
                time.sleep(1)
                for page in pages:
                    name = (page or "index").replace("/", "-")
                    url = (
                        f"http://127.0.0.1:{port}/{page}/" if page else f"http://127.0.0.1:{port}/"
                    )
                    for width in WIDTHS:
                        path = args.out / f"{name}-{width}-{scheme}.png"
                        probe = shoot(browser, url, width, scheme, path)
                        results.setdefault(name, []).append(
                            f"{width}/{scheme}: {probe['height']} px, clipped code "
                            f"{probe['clipped']}, scrolling tables {probe['scrolling_tables']}"
                            + (" (scheme set by the toggle)" if probe["toggled"] else "")
                        )
                    if scheme == SCHEMES[-1]:
                        print(f"{name}: " + "; ".join(results[name]), flush=True)
            finally:
                browser.close()
        server.shutdown()
    return 0


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """The static server, without a log line per request."""

    def log_message(self, format: str, *args: Any) -> None:
        """Say nothing."""


if __name__ == "__main__":
    sys.exit(main())
