"""An extension that records every hook call, and the rules any record must keep.

Used by ``test_extensions.py`` and by the fuzzer (``test_fuzz.py``), which
attaches it to every random program it runs.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from greenlet import getcurrent

from fiberloader import Extension

Event = Tuple[Any, ...]  # (hook name, arguments..., the greenlet it ran in)


class Recorder(Extension):
    """Records every hook call with the greenlet it ran in."""

    def __init__(self) -> None:
        self.events: List[Event] = []

    def _add(self, *event: Any) -> None:
        self.events.append((*event, getcurrent()))

    def run_started(self, dataloader: Any) -> None:
        self._add("run_started")

    def run_finished(self, dataloader: Any, error: Optional[BaseException]) -> None:
        self._add("run_finished", type(error).__name__ if error else None)

    def fiber_started(self, dataloader: Any) -> None:
        self._add("fiber_started")

    def fiber_finished(self, dataloader: Any) -> None:
        self._add("fiber_finished")

    def job_started(self, dataloader: Any) -> None:
        self._add("job_started")

    def job_finished(self, dataloader: Any, error: Optional[BaseException]) -> None:
        self._add("job_finished", type(error).__name__ if error else None)

    def job_suspended(self, dataloader: Any, source: Any, keys: Any) -> None:
        self._add("job_suspended", source, list(keys))

    def job_resumed(self, dataloader: Any) -> None:
        self._add("job_resumed")

    def fetch_started(self, dataloader: Any, source: Any, keys: List[Any]) -> None:
        self._add("fetch_started", source, list(keys))

    def fetch_finished(self, dataloader: Any, source: Any, keys: List[Any], error: Optional[BaseException]) -> None:
        self._add("fetch_finished", source, list(keys), type(error).__name__ if error else None)


def hook_problems(events: List[Event], hub: Any) -> List[str]:
    """What is wrong with a record of one or more runs called from ``hub`` (empty: nothing).

    Per greenlet: runs, jobs and fetches open and close in order (a worker
    starts a job or fetch only when free, or inside a run it is the hub of;
    a nested run only inside a job or fetch); parks happen inside a job or fetch and
    end before it does; a worker's first hook is ``fiber_started`` and its
    last ``fiber_finished``, once each per run it served.
    """
    problems: List[str] = []
    by_greenlet: Dict[Any, List[str]] = {}
    for event in events:
        by_greenlet.setdefault(event[-1], []).append(event[0])
    for greenlet, names in by_greenlet.items():
        where = "the hub" if greenlet is hub else f"worker {greenlet!r}"
        if greenlet is not hub and (names[0] != "fiber_started" or names[-1] != "fiber_finished"):
            problems.append(f"{where}: does not start with fiber_started and end with fiber_finished: {names}")
        open_: List[str] = []
        parked = False
        for name in names:
            kind = name.rsplit("_", 1)[0]
            if name in ("run_started", "job_started", "fetch_started"):
                busy = open_ and open_[-1] != "run"
                if parked or (greenlet is not hub and kind != "run" and busy) or (
                    kind == "run" and greenlet is not hub and (not open_ or open_[-1] == "run")
                ):
                    problems.append(f"{where}: {name} out of place: {names}")
                    break
                open_.append(kind)
            elif name in ("run_finished", "job_finished", "fetch_finished"):
                if not open_ or open_[-1] != kind or parked:
                    problems.append(f"{where}: {name} closes nothing open: {names}")
                    break
                open_.pop()
            elif name == "job_suspended":
                # the top may be a run: its hub waiting, in the enclosing run, on keys
                # in flight there (Run.wait_elsewhere)
                if not ("job" in open_ or "fetch" in open_) or parked:
                    problems.append(f"{where}: parked outside a job or fetch: {names}")
                    break
                parked = True
            elif name == "job_resumed":
                if not parked:
                    problems.append(f"{where}: resumed without a park: {names}")
                    break
                parked = False
            elif name == "fiber_started" and open_:
                problems.append(f"{where}: fiber_started inside a {open_[-1]}: {names}")
                break
        else:
            if open_ or parked:
                problems.append(f"{where}: left open: {open_}{' (parked)' if parked else ''}: {names}")
    return problems
