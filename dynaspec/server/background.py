"""Run a server app with uvicorn on a background thread (tests, notebooks, in-process benchmarks).

Uses uvicorn's programmatic API (`uvicorn.Config` + `uvicorn.Server`); `serve_in_thread` binds a free
loopback port, waits until /health answers 200, and on exit asks uvicorn to stop and joins the thread.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Iterator

import uvicorn
from fastapi import FastAPI


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int | None = None,
                    startup_timeout: float = 120.0, **uvicorn_kwargs) -> Iterator[str]:
    """Serve `app` on host:port (a free port if None) and yield its base URL, e.g. http://127.0.0.1:PORT."""
    port = free_port(host) if port is None else port
    uvicorn_kwargs.setdefault("timeout_graceful_shutdown", 5)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", **uvicorn_kwargs)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dynaspec-uvicorn", daemon=True)
    thread.start()
    base = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if not thread.is_alive():
                raise RuntimeError("server thread exited during startup (see its log)")
            try:
                with urllib.request.urlopen(base + "/health", timeout=1.0) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server at {base} not healthy after {startup_timeout} s")
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(30.0)
