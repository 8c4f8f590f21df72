"""Fixtures shared by the tests: one intra-op thread for the whole session, where the real datasets are,
and a loopback HTTP server standing in for dataset mirrors."""
import functools
import http.server
import os
import socket
import threading
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread for every test: the models are tiny, and under CPU contention (another
    process busy on one of two cores) OpenMP's second thread made a 128x266 matmul ~100x slower and
    the LSTMs several times slower. Commands that set the thread count themselves (gist, rnn) restore it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The workplace's datasets, beside the repository."""


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding ``mnist/``: $SYNTHGRAD_DATA, else ``SHARED_DATA``.
    Without MNIST there the tests that need real data skip, unless SYNTHGRAD_DATA named the folder: then
    they fail, so that CI pointed at a wrong path cannot pass by skipping them."""
    explicit = os.environ.get("SYNTHGRAD_DATA")
    root = Path(explicit) if explicit else SHARED_DATA
    if not (root / "mnist").is_dir():
        message = f"no MNIST in {root}; set SYNTHGRAD_DATA to the shared data directory"
        if explicit:
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture
def environ(data_root: Path) -> dict[str, str]:
    """The environment ``synthgrad.cli.main`` gets in the tests: real MNIST from ``data_root``."""
    return {"SYNTHGRAD_DATA": str(data_root)}


@pytest.fixture
def no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a CI proxy setting from routing the loopback test server through a proxy."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory, no_proxy_for_loopback):
    """An HTTP server on 127.0.0.1 serving the files in the yielded folder at the yielded base URL."""
    served = tmp_path_factory.mktemp("served")  # apart from tmp_path, which tests list

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval so shutdown() returns at once instead of after the default 0.5 s.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def closed_url(no_proxy_for_loopback) -> str:
    """A loopback URL nobody listens on, so connecting is refused at once (an offline mirror)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
