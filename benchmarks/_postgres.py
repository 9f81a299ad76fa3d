"""A throwaway PostgreSQL server for the benchmarks: found, started on 127.0.0.1, stopped.

``find_postgres(where)`` finds ``initdb``, ``pg_ctl`` and ``postgres`` (on
``PATH``, else the newest ``/usr/lib/postgresql/*/bin``); ``postgres_server``
runs one in a temporary directory (as the ``postgres`` user when the script
runs as root: initdb refuses root) and always stops it and removes the
directory, on SIGTERM and SIGHUP too.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any, Iterator, Optional, Tuple

import _report

POSTGRES_TOOLS = ("initdb", "pg_ctl", "postgres")
POSTGRES_USER = "postgres"  # who runs the server when the script runs as root


def find_postgres(where: Optional[str]) -> Tuple[Optional[str], str]:
    """The directory of ``initdb``, ``pg_ctl`` and ``postgres``, or None and why not."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None, "psycopg 3 is not installed (python -m pip install 'psycopg[binary]')"
    on_path = shutil.which("pg_ctl")
    installed = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: [int(n) for n in re.findall(r"\d+", d)])
    candidates = [where] if where else [*([os.path.dirname(on_path)] if on_path else []), *reversed(installed)]
    found = [d for d in candidates if all(os.access(os.path.join(d, tool), os.X_OK) for tool in POSTGRES_TOOLS)]
    if not found:
        looked = where or "PATH and /usr/lib/postgresql/*/bin"
        return None, f"no PostgreSQL server binaries ({', '.join(POSTGRES_TOOLS)}) in {looked}"
    if os.geteuid() == 0:  # initdb refuses root: the server runs as the postgres user
        import pwd

        try:
            pwd.getpwnam(POSTGRES_USER)
        except KeyError:
            return None, f"running as root, and there is no {POSTGRES_USER!r} user to run the server as"
        if shutil.which("runuser") is None:
            return None, f"running as root, and there is no runuser to run the server as {POSTGRES_USER!r}"
    return found[0], ""


def postgres_description(bin_dir: str) -> str:
    """The server's and psycopg's versions, for the header."""
    import psycopg

    server = subprocess.run(
        [os.path.join(bin_dir, "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()  # fmt: skip
    libpq = psycopg.pq.version()
    return (
        f"{server.removeprefix('postgres (PostgreSQL) ')} server (own instance in a temporary directory, "
        f"TCP 127.0.0.1), psycopg {psycopg.__version__} ({psycopg.pq.__impl__}, "
        f"libpq {libpq // 10000}.{libpq % 10000}), autocommit"
    )


def exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # so that the server's finally block runs


@contextlib.contextmanager
def postgres_server(bin_dir: str) -> Iterator[str]:
    """A fresh server in a temporary directory, on 127.0.0.1 only; yields its conninfo.

    Always stopped (``pg_ctl stop -m fast``, then ``-m immediate`` if that fails)
    and its directory removed, on SIGTERM and SIGHUP too.
    """
    directory = tempfile.mkdtemp(prefix="fiberloader-bench.pg.")
    data = os.path.join(directory, "data")
    log = os.path.join(directory, "log")
    as_user = ["runuser", "-u", POSTGRES_USER, "--"] if os.geteuid() == 0 else []

    def tool(name: str, *args: str, check: bool = True) -> "subprocess.CompletedProcess[str]":
        argv = [*as_user, os.path.join(bin_dir, name), *args]
        done = subprocess.run(argv, cwd=directory, capture_output=True, text=True)
        if check and done.returncode != 0:
            tail = ""
            if os.path.exists(log):
                with open(log) as server_log:
                    tail = server_log.read()[-2000:]
            raise RuntimeError(f"{name} {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}{tail}")
        return done

    handlers = {signum: signal.signal(signum, exit_on_signal) for signum in (signal.SIGTERM, signal.SIGHUP)}
    started = False
    try:
        if as_user:
            shutil.chown(directory, POSTGRES_USER, POSTGRES_USER)
        tool("initdb", "-D", data, "--auth=trust", "--username=bench", "--encoding=UTF8", "--locale=C", "--no-sync")
        port = _report.free_port()
        started = True  # from here on, stop it whatever happens
        tool("pg_ctl", "-D", data, "-o", f"-h 127.0.0.1 -p {port} -k {shlex.quote(directory)}", "-l", log, "-w", "start")
        yield f"host=127.0.0.1 port={port} user=bench dbname=postgres sslmode=disable gssencmode=disable"
    finally:
        try:
            if started and tool("pg_ctl", "-D", data, "-m", "fast", "-w", "stop", check=False).returncode != 0:
                tool("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)
        finally:
            if os.path.exists(os.path.join(data, "postmaster.pid")):
                print(f"PostgreSQL may still be running: see {directory} (not removed)", file=sys.stderr)
            else:
                shutil.rmtree(directory, ignore_errors=True)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)


