"""Zero-change batching of Django's lazy relation loads.

With ``settings.FIBERLOADER_BATCH_LAZY_LOADS = True`` every dataloader made
in the process gets the :class:`BatchLazyLoads` extension (or pass one in
``extensions=``).  Then, inside a job or fetch of that dataloader
(``Dataloader`` or ``AsyncDataloader``, not ``NullDataloader``), a lazy
relation load parks the job instead of querying:

* a forward foreign key or one-to-one (``comment.post``) that is not cached;
* a reverse one-to-one (``place.restaurant``) that is not cached;
* the unfiltered queryset of a reverse foreign key or many-to-many manager
  (``post.comments.all()``, and what graphene-django's list fields take
  from ``get_queryset()``), when it is evaluated (iterated, ``len``,
  ``bool``, ``list``).  Its writes that Django lets keep a prefetched list
  (``get_or_create``, ``update_or_create``, and ``create`` before Django
  5.0) forget it first.  A filtered, ordered, sliced or counted queryset
  runs its own query as always.

When no job can go on, each relation's pending instances are loaded with
``prefetch_related_objects`` -- one query per relation and database per
round -- and every job resumes with its instance filled exactly as
``prefetch_related`` fills it: the forward cache, or the prefetch cache, so
that later ``.all()`` calls on that instance cost nothing (until a write
through the manager clears it, as with ``prefetch_related``).

Peers: a batch also takes the *peers* of its instances -- the other
instances the same query returned -- whose relation is not loaded yet, as
django-auto-prefetch does.  So a plain loop in one job (``for post in
posts: post.author``) costs one query per relation, and jobs add what a
per-queryset scheme cannot: instances from different queries, resolvers
and branches in one batch.

How it hooks in (Django 4.2 to 5.2; wrapped once, when the first
``BatchLazyLoads`` is made, and unchanged in behaviour outside batching
jobs):

* ``ForwardManyToOneDescriptor.get_object`` -- the query of a forward key
  (``ForwardOneToOneDescriptor`` calls it too; parent links keep Django's
  own query-free path);
* ``ReverseOneToOneDescriptor.__get__``;
* ``ReverseManyToOneDescriptor.__get__`` (``ManyToManyDescriptor``
  inherits it): in a batching job the manager it returns is of a subclass
  whose ``get_queryset`` marks the unfiltered queryset it returns (a clone
  -- ``filter()``, ``order_by()`` ... -- is not marked);
* ``QuerySet._fetch_all``: evaluates a marked queryset from the batch, and
  notes the peers of the model instances a query returned.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from django.db.models import Model, QuerySet  # type: ignore[import-untyped]
from django.db.models.fields.related_descriptors import (  # type: ignore[import-untyped]
    ForwardManyToOneDescriptor,
    ReverseManyToOneDescriptor,
    ReverseOneToOneDescriptor,
)
from django.db.models.query import ModelIterable  # type: ignore[import-untyped]

from ._django_orm import AssociationSource
from ._extensions import Extension
from ._fibers import CURRENT
from ._orm import Peers, Same, batches_here, with_peers

__all__ = ["BatchLazyLoads"]

_PEERS = "fiberloader_peers"  # the attribute of a model instance's _state that holds its Peers
_MARK = "_fiberloader_lazy"  # the attribute of a marked queryset: the manager it came from


class BatchLazyLoads(Extension):
    """Batch Django's lazy relation loads in the jobs of the dataloaders it is attached to.

    ``settings.FIBERLOADER_BATCH_LAZY_LOADS = True`` attaches it to every
    dataloader; ``Dataloader(extensions=[BatchLazyLoads()])`` to one.  It
    has no hooks: the wrapped descriptors look for it on the dataloader of
    the calling job.
    """

    def __init__(self) -> None:
        _install()

    def __repr__(self) -> str:
        return "BatchLazyLoads()"


def _batching() -> Any:
    """The dataloader that batches the calling job's lazy loads, or ``None``."""
    dataloader = CURRENT.get()
    if dataloader is None or not any(isinstance(e, BatchLazyLoads) for e in dataloader.extensions):
        return None
    return dataloader if batches_here(dataloader) else None


class _LazyRelation(AssociationSource):
    """One relation of ``model``, loaded for the lazy-load hooks.

    Unlike :class:`AssociationSource` each Python object is its own key
    (two objects of one row are both filled), its batch takes the peers of
    its keys, and the value is the instance's own cache: ``fetch`` fills
    the instances and returns nothing else.
    """

    def result_key_for(self, key: Any) -> Any:
        return Same(key)

    def fetch(self, instances: List[Any]) -> List[Any]:
        model, is_loaded = self.model, self._loaded  # a lazy load's name is one level: always set

        def wanted(peer: Any) -> bool:
            return isinstance(peer, model) and peer.pk is not None and not is_loaded(peer)

        self._fill(with_peers(instances, _peers_of, wanted))
        return [None] * len(instances)

    def __repr__(self) -> str:
        return f"lazy loads of {self.model.__name__}.{self.name}"


def _peers_of(instance: Any) -> Optional[Peers]:
    peers: Optional[Peers] = instance._state.__dict__.get(_PEERS)
    return peers


def _load(dataloader: Any, instance: Any, model: Any, name: str) -> None:
    """Park the calling job until ``instance``'s relation ``name`` is filled by a batch."""
    source = dataloader.with_(_LazyRelation, model, name)
    source.clear(instance)  # reached only when the instance's own cache is empty: load again
    source.load(instance)


# -- the wrapped descriptors ---------------------------------------------------------

_originals: Dict[str, Any] = {}


def _get_object(self: Any, instance: Any) -> Any:
    """``ForwardManyToOneDescriptor.get_object``: the related object from a batch."""
    field = self.field
    if not field.remote_field.parent_link:
        dataloader = _batching()
        if dataloader is not None:
            _load(dataloader, instance, field.model, field.name)
            value = field.get_cached_value(instance, default=None)
            if value is not None:
                return value
            if field.is_cached(instance):
                # No row: let Django's own query raise its DoesNotExist, as without batching.
                field.delete_cached_value(instance)
    return _originals["get_object"](self, instance)


def _reverse_one_to_one_get(self: Any, instance: Any, cls: Any = None) -> Any:
    """``ReverseOneToOneDescriptor.__get__``: fill the cache from a batch first."""
    if instance is not None:
        related = self.related
        if not related.is_cached(instance) and instance.pk is not None:
            dataloader = _batching()
            if dataloader is not None:
                _load(dataloader, instance, related.model, related.get_accessor_name())
    return _originals["reverse_one_to_one_get"](self, instance, cls)


def _related_manager_get(self: Any, instance: Any, cls: Any = None) -> Any:
    """``ReverseManyToOneDescriptor.__get__``: in a batching job, a manager that marks its queryset."""
    manager = _originals["related_manager_get"](self, instance, cls)
    if instance is not None and _batching() is not None:
        manager.__class__ = _marking_class(self, type(manager))
    return manager


# Per related manager class (each descriptor makes its own): its marking subclass.
_marking_classes: Dict[type, type] = {}


def _marking_class(descriptor: Any, manager_class: type) -> type:
    """The subclass of a related manager class whose unfiltered queryset is marked."""
    try:
        return _marking_classes[manager_class]
    except KeyError:
        pass
    if getattr(descriptor, "reverse", True):  # a reverse foreign key, or the reverse of a many-to-many
        relation = (descriptor.rel.model, descriptor.rel.get_accessor_name())
    else:
        relation = (descriptor.field.model, descriptor.field.name)

    def get_queryset(self: Any) -> Any:
        queryset = super(marking, self).get_queryset()  # type: ignore[arg-type]
        if queryset._result_cache is None:  # not prefetched
            setattr(queryset, _MARK, self)
        return queryset

    def clearing(name: str) -> Callable[..., Any]:
        """A write that first forgets the prefetched list the batch may have filled.

        ``add``, ``remove``, ``clear`` and ``set`` do so in Django already;
        ``get_or_create`` and ``update_or_create`` do not (nor ``create``
        of a reverse foreign key before Django 5.0), and the plain lazy load
        this replaces would have queried again.
        """
        write = getattr(manager_class, name)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            self._remove_prefetched_objects()
            return write(self, *args, **kwargs)

        method.__name__ = name
        method.alters_data = True  # type: ignore[attr-defined]
        return method

    attributes: Dict[str, Any] = {
        "__module__": manager_class.__module__,
        "__qualname__": manager_class.__qualname__,
        "_fiberloader_relation": relation,
        "get_queryset": get_queryset,
    }
    for name in ("create", "get_or_create", "update_or_create"):
        if hasattr(manager_class, name):
            attributes[name] = clearing(name)
    marking = type(manager_class.__name__, (manager_class,), attributes)
    _marking_classes[manager_class] = marking
    return marking


def _fetch_all(self: Any) -> None:
    """``QuerySet._fetch_all``: a marked queryset from the batch; peers of what a query returns."""
    if self._result_cache is not None:
        return _originals["fetch_all"](self)  # type: ignore[no-any-return]
    manager = self.__dict__.pop(_MARK, None)
    if manager is not None:
        dataloader = _batching()
        if dataloader is not None:  # else evaluated outside the job that made it: query
            model, name = manager._fiberloader_relation
            _load(dataloader, manager.instance, model, name)
            filled = manager.get_queryset()
            if filled._result_cache is not None:
                self._result_cache = list(filled._result_cache)
    queried = self._result_cache is None  # not filled from a batch above
    _originals["fetch_all"](self)
    rows: List[Any] = self._result_cache or []
    if queried and len(rows) > 1 and self._iterable_class is ModelIterable and _batching() is not None:
        _note_peers(rows, bool(self.query.select_related))
    return None


def _note_peers(rows: List[Any], selected: bool) -> None:
    """Make ``rows``, the instances one query returned, peers of one another.

    With ``select_related`` the related instances the query built are
    peers too, field by field (and theirs, level by level).  An instance
    that has peers already keeps them: a parent that ``select_related`` or
    a related manager put in the rows' caches came from another query.
    """
    group = Peers(rows)
    related: Dict[str, Dict[int, Any]] = {}
    for row in rows:
        if not isinstance(row, Model):
            continue
        row._state.__dict__[_PEERS] = group
        if selected:
            for name, value in row._state.fields_cache.items():
                if isinstance(value, Model) and _PEERS not in value._state.__dict__:
                    related.setdefault(name, {})[id(value)] = value
    for instances in related.values():
        if len(instances) > 1:
            _note_peers(list(instances.values()), selected)


def _install() -> None:
    """Wrap Django's descriptors, once per process."""
    if _originals:
        return
    _originals["get_object"] = ForwardManyToOneDescriptor.get_object
    _originals["reverse_one_to_one_get"] = ReverseOneToOneDescriptor.__get__
    _originals["related_manager_get"] = ReverseManyToOneDescriptor.__get__
    _originals["fetch_all"] = QuerySet._fetch_all
    ForwardManyToOneDescriptor.get_object = _get_object
    ReverseOneToOneDescriptor.__get__ = _reverse_one_to_one_get
    ReverseManyToOneDescriptor.__get__ = _related_manager_get
    QuerySet._fetch_all = _fetch_all
