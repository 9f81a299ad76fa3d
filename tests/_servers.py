"""Real servers for the tests: a free port, a JSON fetch, a gunicorn with one gevent worker.

Used by ``tests/test_example_blog.py`` and ``tests/test_soak.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import gunicorn.config as gunicorn_config  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["ROOT", "free_port", "fetch", "gunicorn"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fetch(url: str, timeout: float = 15.0, *, data: Optional[bytes] = None,
          headers: Optional[Mapping[str, str]] = None) -> Tuple[int, Any, Dict[str, str]]:
    """(status, JSON body, headers) of a GET (or a POST when ``data`` is given); an HTTP error is an answer too."""
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        with error:
            raw = error.read()
            try:
                body = json.loads(raw)
            except ValueError:  # not the app's JSON: gunicorn's own error page
                body = raw.decode("utf-8", "replace")
            return error.code, body, dict(error.headers)


@contextmanager
def gunicorn(database: str, scheduler: str, log_path: Path, *, app: str = "examples.blog.wsgi:application",
             ready_path: str = "/api/posts?first=0", env: Optional[Mapping[str, str]] = None,
             args: Sequence[str] = ()) -> Iterator[str]:
    """``gunicorn -k gevent --workers 1`` serving ``app`` on a free port; yields its base URL.

    ``BLOG_DB`` is ``database`` and ``FIBERLOADER_DATALOADER`` is
    ``scheduler``; ``env`` adds variables, ``args`` gunicorn options.  Ready
    when ``ready_path`` answers 200.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "BLOG_DB": database, "FIBERLOADER_DATALOADER": scheduler,
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    environment.pop("BLOG_BATCHING", None)
    environment.update(env or {})
    command = [sys.executable, "-m", "gunicorn", "-k", "gevent", "--workers", "1", "-b", f"127.0.0.1:{port}",
               "--graceful-timeout", "5", *args, app]
    if hasattr(gunicorn_config, "ControlSocketDisable"):  # gunicorn >= 25.1: no socket under ~/.gunicorn
        command.insert(-1, "--no-control-socket")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while True:
                assert server.poll() is None, f"gunicorn exited:\n{log_path.read_text()}"
                try:
                    if fetch(f"{base}{ready_path}", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, f"gunicorn not ready after 20 s:\n{log_path.read_text()}"
                time.sleep(0.1)
            yield base
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
