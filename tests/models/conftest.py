"""Fixtures of the models tests: a local HTTP server for checkpoint downloads."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from pathlib import Path

import pytest


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


class LocalServer:
    """Serves the files of ``root`` on 127.0.0.1; ``url(name)`` gives a file's URL."""

    def __init__(self, root: Path):
        self.root = root
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_files(tmp_path):
    """A :class:`LocalServer` over ``tmp_path / "served"``."""
    root = tmp_path / "served"
    root.mkdir()
    server = LocalServer(root)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def refused_url():
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.pth"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """``$NAPARI_SAM_MICRO_CACHE`` pointed at an empty temporary folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM_MICRO_CACHE", str(folder))
    return folder
