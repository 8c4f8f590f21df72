"""Does pooch keep synthgrad's download guarantees? Each case runs against an HTTP server on loopback.

Three ways to fetch one `.gz` dataset file (an MNIST-like IDX payload) from a list of mirrors:

- `synthgrad`: `synthgrad.data.download.download_file`, checksum of the decompressed content.
- `pooch`: `pooch.retrieve(urls[0], known_hash=...)` as pooch documents it: one URL, the sha256 of the
  publisher's compressed bytes.
- `pooch, mirror loop`: the same call on each URL in turn until one succeeds, the least wrapper that
  gives pooch a fallback (pooch has none; `retry_if_failed` retries the same URL).
- `synthgrad, pooch fetching`: `download_file` with its one-URL fetch (`_fetch`) done by pooch instead
  of urllib, i.e. what adopting pooch while keeping synthgrad's checks would be.

It prints a Markdown report: what each way does per case (result, files left beside the destination,
the first words of the failure), the mode of a downloaded file, the lines of code, the packages each
needs, and the time to fetch one file. Needs `pip install pooch` (not a synthgrad dependency).

    python benchmarks/pooch_vs_download.py --size-mb 16 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import http.server
import importlib.metadata
import inspect
import io
import os
import re
import shutil
import socket
import statistics
import tempfile
import threading
import time
import tokenize
import unittest.mock
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np
import pooch
import requests

from synthgrad.data import download

_NAME = "train-images-idx3-ubyte.gz"


def _payload(size_mb: float) -> bytes:
    """An IDX-like body: mostly zero bytes with some ink, so it compresses about as MNIST does."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, int(size_mb * 2**20), dtype=np.uint8)
    pixels[rng.random(pixels.size) < 0.8] = 0
    return b"\x00\x00\x08\x01" + len(pixels).to_bytes(4, "big") + pixels.tobytes()


def _routes(content: bytes) -> dict[str, bytes]:
    """What each path serves: the publisher's copy and a re-wrapped one (same content, other gzip)."""
    return {
        "/good/": gzip.compress(content, compresslevel=9, mtime=0),
        "/rewrapped/": gzip.compress(content, compresslevel=6, mtime=1_600_000_000),
        "/cut/": gzip.compress(content, compresslevel=9, mtime=0),  # connection closed halfway
        "/html/": b"<html><body>This page has moved.</body></html>",  # served with 200
    }


@contextlib.contextmanager
def _server(routes: dict[str, bytes]) -> Iterator[str]:
    """Serve `routes` (path prefix -> body) on 127.0.0.1; any other path is a 404."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            prefix = self.path[: self.path.rfind("/") + 1]
            if prefix not in routes:
                self.send_error(404)
                return
            body = routes[prefix]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if prefix == "/cut/" else body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _closed_url() -> str:
    """A loopback URL nobody listens on: connecting is refused at once, like an offline mirror."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


_Fetch = Callable[[Sequence[str], Path], None]


def _contenders(content: bytes, publisher_gz: bytes) -> dict[str, _Fetch]:
    """The four ways, by column name, each expecting `content` (served as `publisher_gz`)."""
    sha256 = hashlib.sha256(content).hexdigest()
    publisher_hash = "sha256:" + hashlib.sha256(publisher_gz).hexdigest()

    def synthgrad(urls: Sequence[str], dest: Path) -> None:
        download.download_file(urls, dest, sha256=sha256, size=len(content))

    def pooch_one_url(urls: Sequence[str], dest: Path) -> None:
        pooch.retrieve(urls[0], known_hash=publisher_hash, fname=dest.name, path=dest.parent)

    def pooch_mirror_loop(urls: Sequence[str], dest: Path) -> None:
        for url in urls:
            try:
                pooch.retrieve(url, known_hash=publisher_hash, fname=dest.name, path=dest.parent)
                return
            except (requests.RequestException, ValueError):
                if url == urls[-1]:
                    raise

    def synthgrad_pooch_fetching(urls: Sequence[str], dest: Path) -> None:
        with unittest.mock.patch.object(download, "_fetch", _pooch_fetch):
            synthgrad(urls, dest)

    return {
        "synthgrad": synthgrad,
        "pooch": pooch_one_url,
        "pooch, mirror loop": pooch_mirror_loop,
        "synthgrad, pooch fetching": synthgrad_pooch_fetching,
    }


def _pooch_fetch(url: str, handle: BinaryIO, timeout: float) -> None:
    """`download._fetch` done by pooch. Pooch writes to a path, not to an open file, so the body lands
    in a scratch folder beside the temporary file and is copied into it."""
    with tempfile.TemporaryDirectory(dir=Path(handle.name).parent) as scratch:
        downloader = pooch.HTTPDownloader(timeout=timeout)
        body = pooch.retrieve(url, None, fname="body", path=scratch, downloader=downloader)
        handle.seek(0)
        handle.truncate()
        with open(body, "rb") as source:
            shutil.copyfileobj(source, handle, 1 << 20)
    handle.flush()
    os.fsync(handle.fileno())


def _cases(base: str, closed: str) -> dict[str, list[str]]:
    """Each case's mirrors, in the order they are tried."""
    url = {route: f"{base}{route}{_NAME}" for route in ("/good/", "/rewrapped/", "/cut/", "/html/")}
    return {
        "one good mirror": [url["/good/"]],
        "only a re-wrapped .gz mirror (same content)": [url["/rewrapped/"]],
        "dead first mirror, then a good one": [f"{closed}/{_NAME}", url["/good/"]],
        "404 at the first mirror, then a good one": [f"{base}/gone/{_NAME}", url["/good/"]],
        "download cut halfway, then a good mirror": [url["/cut/"], url["/good/"]],
        "download cut halfway, no other mirror": [url["/cut/"]],
        "an HTML page served with 200": [url["/html/"]],
        "offline: every mirror refuses": [f"{closed}/{_NAME}", f"{closed}/mirror2/{_NAME}"],
    }


def _run(fetch: _Fetch, urls: Sequence[str], good: bytes) -> tuple[str, list[str]]:
    """`ok` or the failure's first words, and the files left beside the destination."""
    with tempfile.TemporaryDirectory() as folder:
        dest = Path(folder) / "data" / _NAME
        try:
            fetch(urls, dest)
            ok = gzip.decompress(dest.read_bytes()) == gzip.decompress(good)
            outcome = "ok" if ok else "WRONG CONTENT"
        except Exception as exc:  # noqa: BLE001 - the report shows whatever each raises
            words = re.sub(r"\s+", " ", str(exc))
            words = re.sub(r"http://127\.0\.0\.1:\d+|host='127\.0\.0\.1', port=\d+", "URL", words)
            outcome = f"fails: {type(exc).__name__}: {words[:110]}…"
        left = sorted(p.name for p in dest.parent.glob("*") if p != dest) if dest.parent.exists() else []
        return outcome, left


def _mode(fetch: _Fetch, url: str) -> str:
    """The permission bits of a downloaded file; a file the user makes gets 0o666 & ~umask."""
    with tempfile.TemporaryDirectory() as folder:
        dest = Path(folder) / _NAME
        fetch([url], dest)
        return oct(dest.stat().st_mode & 0o777)


def _seconds(fetch: _Fetch, url: str, repeats: int) -> float:
    """Median wall-clock seconds to fetch and verify the file into a fresh folder."""
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            fetch([url], Path(folder) / _NAME)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _default_log(url: str) -> str:
    """What pooch writes to stderr for one download when its logger is left as pooch sets it up."""
    logger = pooch.get_logger()
    captured = io.StringIO()
    streams = [handler.setStream(captured) for handler in logger.handlers]
    try:
        with tempfile.TemporaryDirectory() as folder:
            pooch.retrieve(url, None, fname=_NAME, path=folder)
    finally:
        for handler, stream in zip(logger.handlers, streams):
            handler.setStream(stream)
    return re.sub(r"http://127\.0\.0\.1:\d+", "URL", re.sub(r"/tmp\S*", "FOLDER'", captured.getvalue()))


def _code_lines(source: str) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring."""
    lines = set()
    previous = tokenize.NEWLINE
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        is_docstring = token.type == tokenize.STRING and previous in (tokenize.NEWLINE, tokenize.INDENT)
        if token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                              tokenize.DEDENT, tokenize.ENDMARKER) and not is_docstring:
            lines.update(range(token.start[0], token.end[0] + 1))
        if token.type not in (tokenize.COMMENT, tokenize.NL):
            previous = token.type
    return len(lines)


def _requirements(distribution: str, seen: set[str] | None = None) -> set[str]:
    """`distribution` and everything it needs (no extras), as installed here."""
    seen = set() if seen is None else seen
    name = distribution.lower().replace("_", "-")
    if name in seen:
        return seen
    seen.add(name)
    for requirement in importlib.metadata.requires(distribution) or []:
        if "extra ==" not in requirement:
            _requirements(re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0], seen)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=16, help="size of the decompressed file")
    parser.add_argument("--repeats", type=int, default=5, help="downloads timed per way (median)")
    args = parser.parse_args()
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1"
    content = _payload(args.size_mb)
    routes = _routes(content)
    contenders = _contenders(content, routes["/good/"])
    with _server(routes) as base:
        print(f"pooch {pooch.__version__}, requests {requests.__version__}; "
              f"file: {len(content) / 2**20:.1f} MiB decompressed, "
              f"{len(routes['/good/']) / 2**20:.1f} MiB as .gz\n")
        log = _default_log(f"{base}/good/{_NAME}")
        # Quiet from here on. Not with setLevel: pooch's logger is outside logging's registry, so
        # setLevel does not clear the answer the logger cached for INFO during the download above.
        pooch.get_logger().disabled = True
        _print_table(contenders, base, routes["/good/"], args.repeats)
    print(f"\nsynthgrad/data/download.py: {_code_lines(inspect.getsource(download))} lines of code, "
          f"of which {_code_lines(inspect.getsource(download._fetch))} (`_fetch`) fetch one URL, the "
          f"only part pooch could take over; done by pooch it is "
          f"{_code_lines(inspect.getsource(_pooch_fetch))} lines (`_pooch_fetch` above).")
    print(f"pooch's own logging of one download, on by default: {log!r}")
    packages = sorted(_requirements("pooch"))
    print(f"pooch needs {len(packages)} packages: {', '.join(packages)}; "
          "download.py needs only the standard library.")


def _print_table(contenders: dict[str, _Fetch], base: str, good: bytes, repeats: int) -> None:
    """One row per case, one column per way, then the file mode and the time."""
    print("| case | " + " | ".join(contenders) + " |\n|---|" + "---|" * len(contenders))
    leftovers = 0
    for case, urls in _cases(base, _closed_url()).items():
        cells = []
        for fetch in contenders.values():
            outcome, left = _run(fetch, urls, good)
            cells.append(outcome + (f" (left behind: {', '.join(left)})" if left else ""))
            leftovers += len(left)
        print(f"| {case} | " + " | ".join(cells) + " |")
    url = f"{base}/good/{_NAME}"
    umask = os.umask(0)
    os.umask(umask)
    print(f"| mode of a downloaded file (umask {oct(umask)}) | "
          + " | ".join(_mode(fetch, url) for fetch in contenders.values()) + " |")
    print(f"| median seconds to fetch the file, {repeats} runs | "
          + " | ".join(f"{_seconds(fetch, url, repeats):.3f}" for fetch in contenders.values())
          + " |")
    print(f"\nFiles or folders left beside the destination, all cases and ways together: {leftovers}.")


if __name__ == "__main__":
    main()
