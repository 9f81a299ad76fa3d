"""Property: any mix of jobs gives the one-key-at-a-time results, batched per level.

Random jobs each follow a chain of dependent loads over 1-3 sources (the
value loaded at one step is the key of the next).  Under every scheduler the
results equal a direct computation, one key at a time; under the batching
schedulers no source is asked twice for a key, and there are no more fetch
calls than sources x the longest chain (one fetch per source per level).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Type

from hypothesis import given, settings
from hypothesis import strategies as st

from fiberloader import Dataloader, NullDataloader, Source

from .conftest import BATCHING_SCHEDULERS


def step(source: int, key: int) -> Any:
    """What source ``source`` returns for ``key`` (keys divisible by 11 fail)."""
    if key % 11 == 10:
        return LookupError(source, key)
    return (key * 7 + source * 3) % 40


class Numbers(Source):
    def __init__(self, index: int, log: List[Tuple[int, List[int]]]) -> None:
        self.index = index
        self.log = log

    @classmethod
    def batch_key_for(cls, index: int, log: Any) -> Any:
        return index

    def fetch(self, keys: List[int]) -> List[Any]:
        self.log.append((self.index, list(keys)))
        return [step(self.index, key) for key in keys]


Job = Tuple[int, List[int], str]  # start key, chain of source indexes, how to load

jobs_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=39),
        st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=4),
        st.sampled_from(["load", "load_all", "request", "map"]),
    ),
    min_size=1,
    max_size=25,
)


def expected(job: Job, sources: int) -> Any:
    key, chain, _ = job
    for index in chain:
        value = step(index % sources, key)
        if isinstance(value, Exception):
            return ("error", index % sources, key)
        key = value
    return key


def run_job(dl: Dataloader, job: Job, sources: int, log: List[Any]) -> Any:
    key, chain, how = job
    try:
        for index in chain:
            source = dl.with_(Numbers, index % sources, log)
            if how == "load":
                key = source.load(key)
            elif how == "load_all":
                key = source.load_all([key, key])[1]
            elif how == "request":
                key = source.request(key).load()
            else:
                key = dl.map(source.load, [key])[0]
    except LookupError as error:
        return ("error",) + error.args
    return key


def run_all(cls: Type[Dataloader], jobs: List[Job], sources: int, limit: Optional[int] = None) -> Any:
    log: List[Tuple[int, List[int]]] = []
    dl = cls(fiber_limit=limit)
    out: Dict[int, Any] = {}
    for position, job in enumerate(jobs):
        dl.append_job(lambda position=position, job=job: out.__setitem__(position, run_job(dl, job, sources, log)))
    dl.run()
    return [out[i] for i in range(len(jobs))], log


@settings(max_examples=60, deadline=None)
@given(jobs=jobs_strategy, sources=st.integers(min_value=1, max_value=3))
def test_batched_results_equal_one_key_at_a_time(jobs: List[Job], sources: int) -> None:
    want = [expected(job, sources) for job in jobs]
    depth = max(len(chain) for _, chain, _ in jobs)
    for cls in BATCHING_SCHEDULERS:
        got, log = run_all(cls, jobs, sources)
        assert got == want, cls
        assert len(log) <= sources * depth, (cls, log)
        for index in range(sources):  # never the same key twice from one source
            keys = [key for source, batch in log if source == index for key in batch]
            assert len(keys) == len(set(keys))
    got, log = run_all(NullDataloader, jobs, sources)
    assert got == want
    assert all(len(batch) == 1 for _, batch in log)


@settings(max_examples=30, deadline=None)
@given(jobs=jobs_strategy, sources=st.integers(min_value=1, max_value=3),
       limit=st.integers(min_value=2, max_value=6))
def test_fiber_limit_never_changes_results(jobs: List[Job], sources: int, limit: int) -> None:
    want = [expected(job, sources) for job in jobs]
    for cls in BATCHING_SCHEDULERS:
        got, _ = run_all(cls, jobs, sources, limit)
        assert got == want
