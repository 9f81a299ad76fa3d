"""``batch_lazy_loads``: SQLAlchemy's own lazy loads, batched (exported by ``fiberloader.sqlalchemy``)."""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Optional, Tuple

from sqlalchemy import event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import InstanceState, LoaderCallableStatus, Mapper, PassiveFlag, registry, strategies

from ._errors import FiberloaderTypeError, short_repr
from ._fibers import CURRENT
from ._orm import batches_here
from ._sqlalchemy_orm import AssociationSource
from ._sqlalchemy_peers import (
    enabled_classes, enabled_mappers, enabled_registries, mapper_enabled, peer_book, record_load,
)

__all__ = ["batch_lazy_loads"]

# -- batch_lazy_loads: the ORM's own lazy loads, batched ----------------------
#
# Theory of operation
# ===================
#
# 1. ``batch_lazy_loads(target)`` notes the target (a class, or a registry)
#    and, the first time, patches ``_LazyLoader._emit_lazyload`` (2.0:
#    ``LazyLoader``) and listens to every mapper's ``load`` event.
#    SQLAlchemy calls ``_emit_lazyload`` only when a lazy load is about to
#    run SQL: after its own shortcuts (a many-to-one whose target the
#    identity map holds, a ``None`` foreign key, ``lazy="raise"``).
# 2. The patched method takes the batching path only for a plain load (see
#    ``_plain_load``): an attribute read on a persistent instance of an
#    enabled mapper, without loader options, not during a flush, inside a
#    job or fetch of a running ``Dataloader`` or ``AsyncDataloader``.
#    Anything else calls SQLAlchemy's own method, unchanged.
# 3. The batching path loads the instance -- and its *peers* -- with
#    ``AssociationSource(session, parent model, relationship)``: the job
#    parks, every pending access to that relationship in that session joins
#    the batch, one statement fills them all with ``set_committed_value``,
#    and the method returns ``ATTR_WAS_SET``: SQLAlchemy's attribute access
#    then reads the value the batch put into the instance.
# 4. Peers are what lets one job's plain loop batch (``for post in posts:
#    post.author``): the other instances one query loaded (recorded by the
#    ``load`` event, per ``QueryContext``) or one batch returned
#    (``AssociationSource.fetch``), whose relationship is still unloaded.
#    The first access requests them all; while that batch is pending, the
#    other members' accesses only wait for it.  The groups live in a
#    per-dataloader ``_PeerBook`` and hold the instances' states weakly.
#
# Not guaranteed: which statement loads a relationship (a peer may be
# loaded before the code reads it, so a loop that stops early may load
# more than it reads), and the order of rows that tie on the
# relationship's ``order_by`` (the batch breaks ties by primary key).

_LazyLoader: Any = getattr(strategies, "_LazyLoader", None) or getattr(strategies, "LazyLoader")

_install_lock = threading.Lock()
_original_emit: Optional[Callable[..., Any]] = None  # SQLAlchemy's _emit_lazyload, once patched
def batch_lazy_loads(target: Any, enabled: bool = True) -> None:
    """Batch the lazy loads of ``target``'s relationships in dataloader jobs.

    Inside a job or fetch of a running ``Dataloader`` or ``AsyncDataloader``,
    a relationship attribute access that would emit a lazy ``SELECT``
    (``post.author``, ``post.comments``) waits for the next batch of
    ``AssociationSource(session, Post, "author")`` instead: one statement
    per relationship, session and round, which also loads the attribute of
    the other instances the same query loaded (its peers).  The attribute
    is filled as SQLAlchemy fills it: the same value, nothing marked dirty,
    no SQL on the next access.  Outside a job, under ``NullDataloader``, and
    for a load with loader options or flags (history, no autoflush),
    SQLAlchemy's own lazy load runs, unchanged.  May suspend the calling
    job until the batch is fetched.

    Calling it again with the same target changes nothing.

    Args:
        target: a declarative base class (every model under it), a
            ``sqlalchemy.orm.registry`` (every class it maps), or one mapped
            class (and its subclasses).
        enabled: ``False`` undoes an earlier call for the same target.

    Raises:
        FiberloaderTypeError: ``target`` is none of these.
    """
    targets = _targets_of(target)
    if enabled:
        _install()
        targets.add(target)
    else:
        targets.discard(target)
    enabled_mappers.clear()


def _targets_of(target: Any) -> "weakref.WeakSet[Any]":
    """The set ``target`` belongs in: the registries or the classes."""
    if isinstance(target, registry):
        return enabled_registries
    if isinstance(target, type) and (
        isinstance(sa_inspect(target, raiseerr=False), Mapper)
        or isinstance(getattr(target, "registry", None), registry)
    ):
        return enabled_classes
    raise FiberloaderTypeError(
        f"fiberloader.sqlalchemy.batch_lazy_loads({short_repr(target)}): the target must be a "
        "declarative base class, a sqlalchemy.orm.registry or a mapped class, but got "
        f"{type(target).__name__}. Pass the models' base class (class Base(DeclarativeBase)), "
        "its registry (Base.registry), or one model class."
    )


def _install() -> None:
    """Patch ``_emit_lazyload`` and listen to ``load`` events, once per process."""
    global _original_emit
    with _install_lock:
        if _original_emit is not None:
            return
        _original_emit = _LazyLoader._emit_lazyload
        _LazyLoader._emit_lazyload = _emit_lazyload
        event.listen(Mapper, "load", record_load, raw=True)


def _emit_lazyload(
    strategy: Any,
    session: Any,
    state: "InstanceState[Any]",
    primary_key_identity: Any,
    passive: Any,
    loadopt: Any,
    *rest: Any,
) -> Any:
    """``_LazyLoader._emit_lazyload``: a plain load in a batching job joins a batch.

    ``rest``: ``extra_criteria``, ``extra_options``,
    ``alternate_effective_path``, ``execution_options`` (SQLAlchemy 2.0 and
    2.1 alike).  Everything else is SQLAlchemy's own method.
    """
    dataloader = CURRENT.get()
    if dataloader is not None and _plain_load(strategy, session, state, passive, loadopt, rest) and batches_here(dataloader):
        return _load_in_batch(dataloader, strategy, session, state)
    return _original_emit(  # type: ignore[misc]
        strategy, session, state, primary_key_identity, passive, loadopt, *rest
    )


def _plain_load(strategy: Any, session: Any, state: "InstanceState[Any]", passive: Any, loadopt: Any,
                rest: Tuple[Any, ...]) -> bool:
    """Whether a batch fills this lazy load exactly as SQLAlchemy would.

    A plain attribute read (``PASSIVE_OFF``: no history, no-autoflush or
    committed-state flags) of a persistent instance of an enabled mapper;
    no loader option on the instance or the load; a target selectable on
    its own (not an aliased class, not correlated to the parent); not
    ``lazy="raise_on_sql"`` (SQLAlchemy's own method raises); not while
    the session flushes (a flush event's load: parked there, the job would
    leave the flush half-done while other jobs use the session).
    """
    if len(rest) != 4:  # another SQLAlchemy than 2.0/2.1: leave it alone
        return False
    extra_criteria, extra_options, alternate_path, execution_options = rest
    return (
        passive == PassiveFlag.PASSIVE_OFF
        and state.key is not None
        and state.identity_token is None  # horizontal sharding: SQLAlchemy's own load
        and not state.load_options
        and not extra_criteria
        and not extra_options
        and alternate_path is None
        and not execution_options
        and (loadopt is None or not loadopt._extra_criteria)
        and not strategy._raise_on_sql
        and not strategy.is_aliased_class
        and not session._flushing
        and not getattr(strategy.parent_property, "_target_correlates_to_parent", False)
        and mapper_enabled(state.mapper)
    )


def _load_in_batch(dataloader: Any, strategy: Any, session: Any, state: "InstanceState[Any]") -> Any:
    """Load the attribute (and its peers') through ``AssociationSource``.

    Returns ``ATTR_WAS_SET``: the batch set the attribute, SQLAlchemy reads
    it from the instance.  May suspend the calling job until the batch is
    fetched.
    """
    key = strategy.key
    source = dataloader.with_(AssociationSource, session, strategy.parent.class_, key)
    instance = state.obj()
    group = peer_book(dataloader).groups.get(state)
    if group is None or source in group.asking:  # no peers, or they are in the pending batch
        values = source.load_all([instance], return_exceptions=True)
    else:
        group.asking.add(source)
        try:
            values = source.load_all([instance, *group.unloaded(state, strategy)], return_exceptions=True)
        finally:
            group.asking.discard(source)
    value = values[0]
    if isinstance(value, Exception):
        raise value
    if key not in state.dict:  # expired again while the job waited: let SQLAlchemy set it
        return value
    return LoaderCallableStatus.ATTR_WAS_SET


