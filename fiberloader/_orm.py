"""Pieces the ORM integrations share: identity keys and peer groups.

* :class:`Same` -- a result key that compares model instances by identity.
* :class:`Peers` -- the instances one query returned, held weakly, so that a
  lazy load of one of them can load the relation of the others too.
* :func:`batches_here` -- whether a dataloader batches the calling code's
  lazy loads (the check both ORMs' hooks make first).

Nothing here imports an ORM.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List
from weakref import ref

from ._errors import short_repr
from ._null import NullDataloader

__all__ = ["Same", "Peers", "with_peers", "batches_here"]


def batches_here(dataloader: Any) -> bool:
    """Whether ``dataloader`` batches (not ``NullDataloader``) and runs the calling code (a job or a fetch)."""
    return not isinstance(dataloader, NullDataloader) and bool(dataloader._in_job())


class Same:
    """A result key that compares instances by identity.

    Django's instances hash and compare by primary key (two objects of one
    row are equal, an unsaved one is unhashable); ``MappedAsDataclass``
    instances compare by field values.  A lazy load fills *this* object, so
    the cache needs the instance itself.  Holding the instance also keeps
    its ``id`` from being reused while the cache entry lives.
    """

    __slots__ = ("instance",)

    def __init__(self, instance: Any) -> None:
        self.instance = instance

    def __hash__(self) -> int:
        return id(self.instance)

    def __eq__(self, other: object) -> bool:
        return type(other) is Same and other.instance is self.instance

    def __repr__(self) -> str:
        return short_repr(self.instance)


class Peers(List[Any]):  # of weakref.ref
    """Weak references to the instances one query returned.

    Every instance of the result holds the same ``Peers`` (so no instance
    keeps another alive).  A copy or a pickle of an instance gets an empty
    group: weak references cannot be pickled, and a copy was not returned
    by the query.
    """

    __slots__ = ()

    def __init__(self, instances: Iterable[Any]) -> None:
        super().__init__(ref(instance) for instance in instances)

    def __reduce__(self) -> Any:
        return (Peers, ((),))


def with_peers(instances: List[Any], group_of: Callable[[Any], Any], wanted: Callable[[Any], bool]) -> List[Any]:
    """``instances`` and, after them, their live peers for which ``wanted(peer)``.

    ``group_of(instance)`` is the instance's :class:`Peers` or ``None``.
    Each group is walked once, however many of its instances are given.
    """
    chosen: Dict[int, Any] = {id(instance): instance for instance in instances}
    seen = set()
    for instance in instances:
        group = group_of(instance)
        if group is None or id(group) in seen:
            continue
        seen.add(id(group))
        for reference in group:
            peer = reference()
            if peer is not None and id(peer) not in chosen and wanted(peer):
                chosen[id(peer)] = peer
    return list(chosen.values())
