"""Django's ORM sources: graphql-ruby's ActiveRecord sources for Django models.

:class:`RecordSource` and :class:`AssociationSource` (exported by
``fiberloader.django``) mirror graphql-ruby's ``ActiveRecordSource`` and
``ActiveRecordAssociationSource``: one ``IN`` query per batch of keys, one
query per relation level per batch of instances; the records an association
loads warm the ``RecordSource`` cache of the same dataloader.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Tuple, Type

from django.core.exceptions import (  # type: ignore[import-untyped]
    FieldDoesNotExist,
    ObjectDoesNotExist,
    ValidationError,
)
from django.db.models import Manager, Model, prefetch_related_objects  # type: ignore[import-untyped]
from django.db.models.constants import LOOKUP_SEP  # type: ignore[import-untyped]

from ._errors import ConfigurationError, FiberloaderTypeError, short_repr
from ._source import Source

__all__ = ["RecordSource", "AssociationSource"]


# -- ORM sources ------------------------------------------------------------------------


def _check_model(model: Any, who: str) -> None:
    if not (isinstance(model, type) and issubclass(model, Model)):
        raise FiberloaderTypeError(
            f"{who}() takes a Django model class first, but got {short_repr(model)}."
        )


def _model_field(model: Any, field: str, who: str) -> Any:
    """The concrete field ``field`` of ``model`` (``"pk"``: its primary key)."""
    _check_model(model, who)
    if field == "pk":
        return model._meta.pk
    try:
        found = model._meta.get_field(field)
    except FieldDoesNotExist:
        found = None
    if found is None or not getattr(found, "concrete", False):
        raise ConfigurationError(
            f"{who}({model.__name__}, {field!r}) needs a concrete field of {model.__name__} "
            f"(a column), but {field!r} is {'not a field' if found is None else 'not a column'}. "
            "Use AssociationSource for relations."
        )
    return found


_record_batch_keys: Dict[Tuple[Any, Any], Tuple[Any, str]] = {}


class RecordSource(Source[Any, Any]):
    """Records of ``model`` by the value of ``field`` (default: the primary key).

    ``with_(RecordSource, Author).load(1)`` is the author with pk 1, or
    ``None``.  Keys are cast to the field's Python type first, so ``"1"`` and
    ``1`` are one key.  One query per batch:
    ``model._default_manager.filter(field__in=keys)``.  ``field`` should be
    unique; otherwise a key gives one of its records (the first in the
    manager's ordering).  A key the field cannot take (``"x"`` for an
    integer) fails that key alone with a ``ValueError``.

    Batch parameters: ``(model, field)``; ``"pk"`` and the primary key's name
    are one source.  graphql-ruby: ``ActiveRecordSource``.
    """

    def __init__(self, model: Type[Any], field: str = "pk") -> None:
        self.model = model
        self.field = _model_field(model, field, "RecordSource")
        self._lookup = f"{self.field.name}__in"

    @classmethod
    def batch_key_for(cls, model: Type[Any], field: str = "pk") -> Hashable:
        try:  # with_() asks on every call: remember the answer
            return _record_batch_keys[model, field]
        except (KeyError, TypeError):
            key = (model, _model_field(model, field, "RecordSource").name)
        _record_batch_keys[model, field] = key
        return key

    def result_key_for(self, key: Any) -> Any:
        try:
            return self.field.to_python(key)
        except (ValidationError, TypeError, ValueError):
            return key  # fetch fails this key alone

    def normalize_fetch_key(self, key: Any) -> Any:
        return self.result_key_for(key)

    def fetch(self, keys: List[Any]) -> List[Any]:
        results: Dict[Any, Any] = {}
        valid = []
        for key in keys:
            try:
                self.field.to_python(key)
            except (ValidationError, TypeError, ValueError) as error:
                results[key] = ValueError(
                    f"{self!r} cannot look up {short_repr(key)}: {error}"
                )
            else:
                valid.append(key)
        if valid:
            attname = self.field.attname
            for record in self.model._default_manager.filter(**{self._lookup: valid}):
                results.setdefault(getattr(record, attname), record)
        return [results.get(key) for key in keys]

    def __repr__(self) -> str:
        return f"RecordSource({self.model.__name__}, {self.field.name!r})"


_SINGLE = ("get_prefetch_querysets", "get_prefetch_queryset")  # the second: Django < 5.0


def _loaded_check(model: Any, attribute: str) -> Optional[Callable[[Any], bool]]:
    """How ``prefetch_related`` tells that ``attribute`` is loaded on an instance of ``model``.

    ``None``: ``attribute`` is not a relation that can be prefetched.
    """
    descriptor = getattr(model, attribute, None)
    if any(hasattr(descriptor, name) for name in _SINGLE):  # a foreign key, one-to-one, generic key
        is_cached = getattr(descriptor, "is_cached", None)
        return is_cached if callable(is_cached) else None
    if hasattr(descriptor, "related_manager_cls"):  # a reverse foreign key, many-to-many
        cache_name = _prefetch_cache_name(descriptor, attribute)

        def in_prefetched_cache(instance: Any) -> bool:
            cache = getattr(instance, "_prefetched_objects_cache", None)
            return cache is not None and cache_name in cache

        return in_prefetched_cache
    return None


def _prefetch_cache_name(descriptor: Any, attribute: str) -> str:
    """Where ``prefetch_related`` keeps the related objects of a manager descriptor.

    The attribute's name, except for the reverse side of a many-to-many
    relation: its query name (``post`` where the attribute is ``post_set``).
    """
    if getattr(descriptor, "reverse", False):
        return descriptor.field.related_query_name()  # type: ignore[no-any-return]
    return attribute


class AssociationSource(Source[Any, Any]):
    """The related records ``name`` of instances of ``model``.

    ``with_(AssociationSource, Post, "comments").load(post)`` is the list of
    the post's comments; for a forward foreign key or a one-to-one relation
    the value is the related instance or ``None``.  ``name`` may span
    relations (``"comments__author"``): the value is the first relation's,
    with the deeper ones loaded on it.

    Each batch of instances costs one query per relation level
    (``prefetch_related_objects``), and the instances are filled as
    ``prefetch_related`` fills them, so ``post.comments.all()`` does not
    query again.  An instance whose relation is already loaded is answered
    at once, without waiting or caching.  Records a foreign key points at
    that the dataloader's ``RecordSource`` already holds are not queried
    again; every record loaded is merged into ``RecordSource(its model)``,
    so a later load by primary key needs no query.

    Keys are model instances (saved: they hash by primary key).  Batch
    parameters: ``(model, name)``.  graphql-ruby:
    ``ActiveRecordAssociationSource``.
    """

    def __init__(self, model: Type[Any], name: str) -> None:
        self.model = model
        self.name = name
        self._path = name.split(LOOKUP_SEP)
        self._first = self._path[0]
        loaded = _loaded_check(model, self._first)
        if loaded is None:
            raise ConfigurationError(
                f"AssociationSource({model.__name__}, {name!r}) needs a relation of "
                f"{model.__name__} (a foreign key, one-to-one, many-to-many or reverse "
                f"accessor), but {self._first!r} is not one. Use RecordSource for columns."
            )
        self._forward = self._forward_field()
        # The already-loaded shortcut only for one level: a deeper one may be missing.
        self._loaded: Optional[Callable[[Any], bool]] = loaded if len(self._path) == 1 else None

    @classmethod
    def batch_key_for(cls, model: Type[Any], name: str) -> Hashable:
        _check_model(model, "AssociationSource")
        if not isinstance(name, str) or not name:
            raise FiberloaderTypeError(
                f"AssociationSource({model.__name__}, ...) takes a relation name, but got "
                f"{short_repr(name)}."
            )
        return (model, name)

    def _forward_field(self) -> Any:
        """The forward foreign key or one-to-one field of a one-level ``name``, else ``None``."""
        if len(self._path) != 1:
            return None
        try:
            field = self.model._meta.get_field(self._first)
        except FieldDoesNotExist:
            return None
        if getattr(field, "concrete", False) and (field.many_to_one or field.one_to_one):
            return field
        return None

    # -- the already-loaded shortcut (graphql-ruby's) ----------------------------

    def _is_loaded(self, instance: Any) -> bool:
        loaded = self._loaded
        return loaded is not None and isinstance(instance, self.model) and loaded(instance)

    def load(self, key: Any) -> Any:
        """The related value of ``key``.  May suspend the calling job until the batch is fetched."""
        if self._is_loaded(key):
            return self._value(key)
        return super().load(key)

    def load_all(self, keys: Iterable[Any], return_exceptions: bool = False) -> List[Any]:
        """The related values of ``keys``, in order.  May suspend the calling job until fetched."""
        keys = list(keys)
        if all(self._is_loaded(key) for key in keys):
            return [self._value(key) for key in keys]
        return super().load_all(keys, return_exceptions)

    # -- fetch ---------------------------------------------------------------------

    def fetch(self, instances: List[Any]) -> List[Any]:
        good = [i for i in instances if isinstance(i, self.model)]
        self._fill(good)
        values = {id(i): self._value(i) for i in good}
        return [values[id(i)] if id(i) in values else self._not_an_instance(i) for i in instances]

    def _fill(self, instances: List[Any]) -> None:
        """Load the relation of ``instances`` as ``prefetch_related`` does, and warm RecordSource.

        One query per relation level per database: ``prefetch_related_objects``
        routes a list by its first instance, so instances of different
        databases (``using()``, a router) are prefetched apart.
        """
        self._take_cached_targets(instances)
        by_database: Dict[Any, List[Any]] = {}
        for instance in instances:
            by_database.setdefault(instance._state.db, []).append(instance)
        for group in by_database.values():
            prefetch_related_objects(group, self.name)
        self._warm(instances)

    def _not_an_instance(self, key: Any) -> FiberloaderTypeError:
        return FiberloaderTypeError(
            f"{self!r}.load() takes saved {self.model.__name__} instances, but got {short_repr(key)}."
        )

    def _value(self, instance: Any) -> Any:
        """The loaded relation of ``instance``: a list, an instance or ``None``."""
        try:
            value = getattr(instance, self._first)
        except ObjectDoesNotExist:  # a missing reverse one-to-one
            return None
        if isinstance(value, Manager):  # reverse foreign key, many-to-many
            return list(value.all())  # the prefetched list: no query
        return value

    def _take_cached_targets(self, instances: List[Any]) -> None:
        """Fill a foreign key from the records ``RecordSource`` holds (no query for them)."""
        field = self._forward
        if field is None:
            return
        records = self.dataloader.with_(  # type: ignore[union-attr]
            RecordSource, field.related_model, field.target_field.name
        )
        for instance in instances:
            if field.is_cached(instance):
                continue
            value = getattr(instance, field.attname)
            if value is None:
                continue
            record = records.cached(value)
            if record is not None and record._state.db == instance._state.db:
                field.set_cached_value(instance, record)

    def _warm(self, instances: List[Any]) -> None:
        """Merge every record loaded, level by level, into ``RecordSource(its model)``."""
        level = instances
        for attribute in self._path:
            is_loaded = _loaded_check(type(level[0]), attribute) if level else None
            if is_loaded is None:
                return
            found: List[Any] = []
            for instance in level:
                if not is_loaded(instance):
                    continue  # never read what is not loaded: that would query
                try:
                    value = getattr(instance, attribute)
                except ObjectDoesNotExist:
                    continue
                if isinstance(value, Manager):
                    found.extend(value.all())
                elif value is not None:
                    found.append(value)
            by_model: Dict[type, Dict[Any, Any]] = {}
            for record in found:
                if isinstance(record, Model) and record.pk is not None:
                    by_model.setdefault(type(record), {})[record.pk] = record
            for model, records in by_model.items():
                self.dataloader.with_(RecordSource, model).merge(records)  # type: ignore[union-attr]
            level = found

    def __repr__(self) -> str:
        return f"AssociationSource({self.model.__name__}, {self.name!r})"
