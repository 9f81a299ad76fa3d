"""What a dataloader did: its totals and each source's counts (``dataloader.stats``).

The counters live where the work happens -- a source counts its own loads,
hits, fetches and failed keys (``Source._counts``), the run counts worker
greenlets -- and these classes read them.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Optional

__all__ = ["DataloaderStats", "SourceStats"]


class SourceStats:
    """What one source instance did (``dataloader.stats.sources[source]``)."""

    __slots__ = ("loads", "cache_hits", "fetches", "keys_fetched", "errors")

    def __init__(self, loads: int = 0, cache_hits: int = 0, fetches: int = 0, keys_fetched: int = 0, errors: int = 0) -> None:
        self.loads = loads  #: keys asked for: load, load_all (n keys: n), request
        self.cache_hits = cache_hits  #: of those, values served from the cache
        self.fetches = fetches  #: fetch() calls
        self.keys_fetched = keys_fetched  #: keys passed to fetch()
        self.errors = errors  #: keys that a fetch failed (an error for the key, or a fetch that raised)

    def add(self, other: "SourceStats") -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def fields(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)}" for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SourceStats):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __repr__(self) -> str:
        return f"SourceStats({self.fields()})"


class DataloaderStats:
    """What one dataloader did, for debugging, tests and benchmarks.

    ``sources`` maps each source instance to its :class:`SourceStats`; the
    totals (``loads``, ``cache_hits``, ``fetches``, ``keys_fetched``,
    ``errors``) add up every source this dataloader had, also those a web
    request's end dropped.  ``greenlets``, ``reused`` and ``max_alive``
    count worker greenlets: those the runs used (the same with the pool of
    idle workers on or off), those of them taken from the pool, the most
    alive at once.
    """

    __slots__ = ("greenlets", "reused", "max_alive", "_sources", "_dropped")

    def __init__(self, sources: Dict[type, Dict[Hashable, Any]]) -> None:
        self.greenlets = 0  #: worker greenlets the runs used: started, or taken from the thread's pool
        self.reused = 0  #: of those, taken from the thread's pool of idle workers (keep_greenlets)
        self.max_alive = 0  #: most worker greenlets alive at once
        self._sources = sources  # the dataloader's: read, never written here
        self._dropped: Optional[SourceStats] = None  # the counts of sources dropped (a request's end)

    @property
    def sources(self) -> Dict[Any, SourceStats]:
        """Each source instance (in the order they were made) and its counts, now.

        Not the per-dataloader holders that are sources only to live as long
        as the dataloader (``_holds_state``: the SQLAlchemy sources' session
        turns, the lazy loads' peer groups): they load nothing.
        """
        return {
            source: source._counts()
            for instances in self._sources.values()
            for source in instances.values()
            if not source._holds_state
        }

    def _total(self, name: str) -> int:
        total: int = 0 if self._dropped is None else getattr(self._dropped, name)
        for instances in self._sources.values():
            for source in instances.values():
                total += getattr(source._counts(), name)
        return total

    loads = property(lambda self: self._total("loads"), doc="keys asked for (load, load_all, request)")
    cache_hits = property(lambda self: self._total("cache_hits"), doc="of those, values served from the cache")
    fetches = property(lambda self: self._total("fetches"), doc="fetch() calls")
    keys_fetched = property(lambda self: self._total("keys_fetched"), doc="keys passed to fetch()")
    errors = property(lambda self: self._total("errors"), doc="keys a fetch failed")

    def _drop(self) -> None:
        """The dataloader drops its sources: keep their counts in the totals."""
        if self._dropped is None:
            self._dropped = SourceStats()
        for counts in self.sources.values():
            self._dropped.add(counts)

    def __repr__(self) -> str:
        totals = ", ".join(
            f"{name}={getattr(self, name)}"
            for name in ("loads", "cache_hits", "fetches", "keys_fetched", "errors", "greenlets", "reused", "max_alive")
        )
        per_source = "".join(f"; {source!r}: {counts.fields()}" for source, counts in self.sources.items())
        return f"DataloaderStats({totals}{per_source})"
