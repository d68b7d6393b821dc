"""Open every page of the built book in headless Chromium and report what a reader would find broken.

Run by tests/test_book.py with .venv-book's Python (Playwright lives there, not in the course's .venv):

    .venv-book/bin/python book/check_site.py book/_build/html

The pages are served from 127.0.0.1, as a web host would serve them; any request that leaves the site (a CDN)
is refused and reported, so a page that works only online fails here. Per page it reports:
- console errors and uncaught exceptions, and requests that fail or leave the site;
- images that did not load (`naturalWidth` 0);
- TeX that MathJax left as text (`$$`, `\\(`, `\\[`, `\\begin{`, or `$...\\command...$`) outside code;
- links within the site to a file that was not built, or to an `#anchor` that the target page lacks.
Prints one line per problem and exits 1 if there is any; Chromium comes from the system (Debian's `chromium`).
"""

import argparse
import functools
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from playwright.sync_api import sync_playwright

# Runs in the page once it has loaded: waits for MathJax and every image, then collects what the checks need.
INSPECT_PAGE = r"""
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const images = Array.from(document.images);
  images.forEach(img => { img.loading = "eager"; });
  await Promise.all(images.map(img => img.decode().catch(() => null)));
  const skipped = "SCRIPT, STYLE, PRE, CODE, TEXTAREA, MJX-CONTAINER, .highlight";
  const rawTex = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const patterns = [/\$\$/, /\\\(/, /\\\[/, /\\begin\{/, /\$[^$\n]*\\[A-Za-z]+[^$\n]*\$/];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest(skipped)) continue;
    const text = node.textContent;
    if (patterns.some(p => p.test(text))) rawTex.push(text.trim().slice(0, 120));
  }
  return {
    brokenImages: images.filter(img => !img.complete || img.naturalWidth === 0).map(img => img.src),
    rawTex,
    links: Array.from(document.querySelectorAll("a[href]")).map(a => a.href),
    anchors: Array.from(document.querySelectorAll("[id], a[name]")).map(e => e.id || e.name),
  };
}
"""


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves files without logging every request."""

    def log_message(self, *args):
        pass


def serve(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    """Serve `folder` on a free port of 127.0.0.1 in a background thread; returns the server and its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def stay_on_site(route, base: str, found: list[str]) -> None:
    """Let a request within the site through; refuse (and report) one that leaves it."""
    if route.request.url.startswith(base):
        route.continue_()
    else:
        found.append(f"request leaves the site: {route.request.url}")
        route.abort()


def site_file(folder: Path, base: str, url: str) -> Path | None:
    """The built file a same-site URL points to, or None for a URL outside the site."""
    if not url.startswith(base):
        return None
    path = unquote(urlsplit(url).path).lstrip("/")
    target = folder / path
    return target / "index.html" if path == "" or path.endswith("/") else target


def check_site(folder: Path, chromium: str) -> tuple[int, list[str]]:
    """Visit every HTML page under `folder`; returns the number of pages and one line per problem."""
    pages = sorted(p for p in folder.rglob("*.html") if "_static" not in p.relative_to(folder).parts)
    server, base = serve(folder)
    problems: list[str] = []
    anchors: dict[Path, set[str]] = {}
    links: dict[Path, list[str]] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            for page_file in pages:
                name = page_file.relative_to(folder).as_posix()
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                found: list[str] = []
                page.on("console", lambda m, f=found: m.type == "error" and f.append(f"console error: {m.text}"))
                page.on("pageerror", lambda e, f=found: f.append(f"uncaught exception: {e}"))
                page.on("requestfailed", lambda r, f=found: f.append(f"request failed: {r.url} ({r.failure})"))
                page.on("response", lambda r, f=found: r.status >= 400 and f.append(f"HTTP {r.status}: {r.url}"))
                page.route("**/*", functools.partial(stay_on_site, base=base, found=found))
                page.goto(base + name, wait_until="load", timeout=60_000)
                redirects = 'http-equiv="refresh"' in page_file.read_text(encoding="utf-8").lower()
                if redirects:  # index.html leads to README.html
                    page.wait_for_url(lambda url, start=base + name: url != start, timeout=60_000)
                    page.wait_for_load_state("load")
                seen = page.evaluate(INSPECT_PAGE)
                page.close()
                found += [f"image not loaded: {src}" for src in seen["brokenImages"]]
                found += [f"raw TeX: {text!r}" for text in seen["rawTex"]]
                anchors[page_file] = set(seen["anchors"])
                links[page_file] = seen["links"]
                problems += [f"{name}: {problem}" for problem in found]
            browser.close()
    finally:
        server.shutdown()
    for page_file, hrefs in links.items():
        name = page_file.relative_to(folder).as_posix()
        for href in sorted(set(hrefs)):
            target = site_file(folder, base, href)
            if target is None:
                continue
            fragment = unquote(urlsplit(href).fragment)
            if not target.is_file():
                problems.append(f"{name}: link to a file that was not built: {href.removeprefix(base)}")
            elif fragment and target.suffix == ".html" and fragment not in anchors.get(target, set()):
                problems.append(f"{name}: link to a missing anchor: {href.removeprefix(base)}")
    return len(pages), problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the built site, e.g. book/_build/html")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable")
    args = parser.parse_args()
    if not (args.folder / "index.html").is_file():
        parser.error(f"{args.folder}: no index.html (build the book first: make book)")
    count, problems = check_site(args.folder.resolve(), args.chromium)
    print("\n".join(problems))
    print(f"{count} pages checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
