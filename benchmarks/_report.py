"""What the benchmark scripts share: versions, the machine, RST tables, a timer."""

from __future__ import annotations

import gc
import os
import platform
import socket
import sys
import time
from importlib import metadata
from typing import Any, Optional, Sequence

import fiberloader


def version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        if distribution == "fiberloader":
            return f"{fiberloader.__version__} (from {os.path.dirname(fiberloader.__file__)})"
        return "not installed"


def processor() -> str:
    name = platform.processor()
    if name and name != platform.machine():
        return name
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return name or platform.machine()


def print_machine_info(distributions: Sequence[str]) -> None:
    """Python, the given distributions' versions, the processor and the platform."""
    width = max(len(name) for name in (*distributions, "processor")) + 1
    print(f"{'python':<{width}} {sys.version.split()[0]} ({platform.python_implementation()})")
    for distribution in distributions:
        print(f"{distribution:<{width}} {version(distribution)}")
    print(f"{'processor':<{width}} {processor()}, os.cpu_count()={os.cpu_count()}")
    print(f"{'platform':<{width}} {platform.platform()}")


def rst_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A reStructuredText simple table."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    rule = "  ".join("=" * width for width in widths)

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right))
        return "  ".join(padded).rstrip()

    return "\n".join([rule, line(header), rule, *(line(row) for row in rows), rule])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server the script starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Timer:
    """Context manager around the timed part of one run; optionally with gc off."""

    def __init__(self, gc_off: bool) -> None:
        self.gc_off = gc_off
        self.elapsed: Optional[float] = None
        self._start = 0.0

    def __enter__(self) -> "Timer":
        if self.elapsed is not None:
            raise RuntimeError("a Timer times one region only")
        if self.gc_off:
            gc.disable()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.elapsed = time.perf_counter() - self._start
        if self.gc_off:
            gc.enable()
