"""The README's code runs, its commands match CI, and the examples work."""

from __future__ import annotations

import io
import os
import re
import runpy
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, List

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text(encoding="utf-8")


def python_blocks(text: str) -> List[str]:
    """The bodies of the ``.. code-block:: python`` directives, dedented."""
    blocks = []
    for match in re.finditer(r"^\.\. code-block:: python\n\n((?:(?:    .*)?\n)+)", text, re.M):
        lines = match.group(1).splitlines()
        blocks.append("\n".join(line[4:] for line in lines))
    return blocks


BLOCKS = python_blocks(README)


def test_readme_is_valid_restructuredtext() -> None:
    """Both READMEs parse without a docutils warning (a malformed table renders as text)."""
    import docutils.core
    import docutils.nodes

    problems: List[str] = []
    for rst in (README, (ROOT / "benchmarks" / "README.rst").read_text(encoding="utf-8")):
        reports = io.StringIO()  # also what the transforms report: a link to no section, a duplicate title
        tree = docutils.core.publish_doctree(
            rst, settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": reports})
        problems += [node.astext()[:200] for node in tree.findall(docutils.nodes.system_message)
                     if node["level"] >= 2]
        problems += reports.getvalue().splitlines()
    assert problems == []


def test_readme_has_code_blocks() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_code_block_runs(index: int) -> None:
    # A real module in sys.modules while it runs: SQLAlchemy resolves the
    # models' annotations through it, as it would for a user's module.
    module = types.ModuleType(f"readme_block_{index}")
    sys.modules[module.__name__] = module
    try:
        exec(compile(BLOCKS[index], f"README.rst block {index}", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]


def quickstart_commands() -> List[str]:
    section = README.split("Quickstart\n----------", 1)[1].split("\n\n\n", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    python -m pip")]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    commands = quickstart_commands()
    assert len(commands) == 2, commands
    test_command = commands[1]
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "set -e" in ci
    assert test_command in ci.splitlines()


DEMO_ROWS = ["naive N+1 loop", "NullDataloader (no batching)", "Dataloader, a job per post",
             "Dataloader, request() handles"]


@pytest.mark.parametrize("posts", [40, 400])
def test_sqlite_demo_collapses_n_plus_one_into_a_few_statements(capsys: Any, posts: int) -> None:
    demo = runpy.run_path(str(ROOT / "examples" / "sqlite_demo.py"))
    assert demo["main"](["--posts", str(posts)]) == 0  # 0: every variant gave the same data
    out = capsys.readouterr().out
    measured = re.search(r"^Loopback round trip, measured just now: ([0-9.e-]+) ms", out, re.M)
    assert measured, out
    rtt = float(measured.group(1))
    assert 0 < rtt < 100
    assert re.search(rf"^variant +SQL statements +time ms +\+ {re.escape(measured.group(1))} ms RTT +\+ 1 ms RTT$",
                     out, re.M), out
    names = "|".join(re.escape(name) for name in DEMO_ROWS)
    rows = {name: (int(statements), float(ms), float(near), float(far)) for name, statements, ms, near, far in
            re.findall(rf"^({names}) +(\d+) +([0-9.]+) +([0-9.]+) +([0-9.]+)$", out, re.M)}
    assert sorted(rows) == sorted(DEMO_ROWS), out  # the request() handles row too, with both estimates
    assert rows["naive N+1 loop"][0] == 1 + 5 * posts  # posts, then per post: author, comments, 3 authors
    # posts; comments + post authors; comment authors not yet cached (if any)
    assert rows["Dataloader, a job per post"][0] in (3, 4)
    assert rows["Dataloader, request() handles"][0] == rows["Dataloader, a job per post"][0]
    for statements, ms, near, far in rows.values():
        # the estimates: the measured time + statements x round trip (printed rounded to 0.1 ms;
        # the round trip is printed to 2 significant digits, the estimate uses the measured value)
        assert near == pytest.approx(ms + statements * rtt, abs=0.11 + statements * rtt * 0.06)
        assert far == pytest.approx(ms + statements * 1.0, abs=0.11)
    assert "The RTT columns are estimates from the measured numbers" in out
    assert "Batching pays when each statement costs a round trip" in out


# The benchmarks need Python 3.11+ (asyncio.Runner; gunicorn 25's --no-control-socket),
# as the README says; the library and its tests do not.
_BENCHMARKS_RUN = pytest.mark.skipif(sys.version_info < (3, 11), reason="the benchmarks need Python 3.11+")


@pytest.mark.parametrize("script, expected", [
    ("bench_core.py", ["(c) N jobs", "fiberloader map(load, keys)"]),
    pytest.param("bench_async.py", ["AsyncDataloader", "aiodataloader", "http", "sleep"], marks=_BENCHMARKS_RUN),
    pytest.param("bench_graphql.py", ["fiberloader Dataloader handles", "graphql-sync-dataloaders", "W3"],
                 marks=_BENCHMARKS_RUN),
    pytest.param("bench_web.py", ["/api/slow", "slow: p50 ms, async"], marks=_BENCHMARKS_RUN),
    pytest.param("bench_lazy.py", ["REST loop", "lazy async", "Graphene-Django"], marks=_BENCHMARKS_RUN),
])
def test_benchmark_smoke_run(script: str, expected: List[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for text in expected:
        assert text in result.stdout
