"""The peers of SQLAlchemy instances: what one query or one batch loaded together.

Which mappers' lazy loads batch (``batch_lazy_loads`` fills the sets
here), and the groups of instances loaded together that let one job's
plain loop batch: recorded by the ``load`` event (``record_load``) and by
``AssociationSource.fetch`` (``loaded_together``), held weakly in a
per-dataloader ``_PeerBook``.  Theory of operation: ``fiberloader._sqlalchemy_lazy``.
"""

from __future__ import annotations

import weakref
from typing import Any, List, Optional, Set

from sqlalchemy.orm import InstanceState, Mapper, registry
from sqlalchemy.orm.attributes import instance_state

from ._fibers import CURRENT
from ._orm import batches_here
from ._source import Source

__all__ = ["enabled_classes", "enabled_registries", "enabled_mappers", "mapper_enabled",
           "peer_book", "record_load", "loaded_together"]

enabled_classes: "weakref.WeakSet[type]" = weakref.WeakSet()
enabled_registries: "weakref.WeakSet[registry]" = weakref.WeakSet()
# mapper -> whether its lazy loads batch; emptied by every batch_lazy_loads call
enabled_mappers: "weakref.WeakKeyDictionary[Mapper[Any], bool]" = weakref.WeakKeyDictionary()
_PEERS = ("fiberloader.sqlalchemy", "peers")  # a query's peer group, in its QueryContext.attributes


def mapper_enabled(mapper: "Mapper[Any]") -> bool:
    """Whether ``mapper``'s class is under an enabled target (cached per mapper)."""
    known = enabled_mappers.get(mapper)
    if known is None:
        known = mapper.registry in enabled_registries or any(
            cls in enabled_classes for cls in mapper.class_.__mro__
        )
        enabled_mappers[mapper] = known
    return known


class _Peers:
    """Instances one query or one batch loaded: each one's peers are the others.

    Holds weak references to their states only; ``asking`` holds the
    sources a member is loading all of them for right now.
    """

    __slots__ = ("members", "asking")

    def __init__(self) -> None:
        self.members: List["weakref.ref[InstanceState[Any]]"] = []
        self.asking: Set[Any] = set()

    def unloaded(self, state: "InstanceState[Any]", strategy: Any) -> List[Any]:
        """The members besides ``state`` whose relationship a plain lazy load would load."""
        key, parent, session_id = strategy.key, strategy.parent, state.session_id
        found = []
        for ref in self.members:
            peer = ref()
            if peer is None or peer is state:
                continue
            instance = peer.obj()
            if (
                instance is not None
                and key not in peer.dict
                and key not in peer.committed_state  # a change not flushed: no load
                and key not in peer.callables  # a loader option's own lazy loader
                and not peer.load_options
                and peer.session_id == session_id
                and peer.persistent
                and peer.mapper.isa(parent)
            ):
                found.append(instance)
        return found


class _PeerBook(Source[Any, Any]):
    """Not a data source: the peer group of each instance loaded in this dataloader's jobs.

    Made by ``peer_book(dataloader)``, so that it lives exactly as
    long as the dataloader; it holds the states weakly (a group holds weak
    references too), so it keeps no instance alive.  Its ``fetch`` is
    never called.
    """

    _holds_state = True

    def __init__(self) -> None:
        self.groups: "weakref.WeakKeyDictionary[InstanceState[Any], _Peers]" = weakref.WeakKeyDictionary()

    def add(self, group: _Peers, state: "InstanceState[Any]") -> None:
        group.members.append(weakref.ref(state))
        self.groups[state] = group

    def fetch(self, keys: List[Any]) -> Any:  # pragma: no cover - nothing loads from it
        raise NotImplementedError("_PeerBook holds peer groups; it loads nothing")


def record_load(state: "InstanceState[Any]", context: Any) -> None:
    """The ``load`` event: instances one query loads in a batching job are peers.

    Cheap when it does not apply: a context variable, then a cached flag.
    """
    dataloader = CURRENT.get()
    if dataloader is None or not mapper_enabled(state.mapper) or not batches_here(dataloader):
        return
    attributes = context.attributes
    entry = attributes.get(_PEERS)
    if entry is None:
        entry = attributes[_PEERS] = (peer_book(dataloader), _Peers())
    book, group = entry
    book.add(group, state)


def loaded_together(dataloader: Any, values: List[Any], uselist: bool) -> None:
    """Make the instances one ``AssociationSource`` batch returned peers of each other.

    So that ``post.comments``, then ``comment.author`` for each comment, is
    two statements; also the instances the session held already (the
    ``load`` event records only new ones).
    """
    if not (enabled_classes or enabled_registries) or dataloader is None or not batches_here(dataloader):
        return  # lazy loads batch nowhere, or not here
    book: Optional[_PeerBook] = None
    group = _Peers()
    seen: Set[int] = set()  # a many-to-one batch returns a target once per instance
    for value in values:
        for record in (value if uselist else (value,)):
            if record is None or id(record) in seen:
                continue
            seen.add(id(record))
            state: InstanceState[Any] = instance_state(record)
            if mapper_enabled(state.mapper):
                if book is None:
                    book = peer_book(dataloader)
                book.add(group, state)


def peer_book(dataloader: Any) -> "_PeerBook":
    """The peer groups of ``dataloader``'s jobs (made on first use, dropped with the dataloader)."""
    book: _PeerBook = dataloader.with_(_PeerBook)
    return book
