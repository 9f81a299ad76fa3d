"""SQLAlchemy 2.x ORM sources: graphql-ruby's ActiveRecord sources for sessions.

``RecordSource(session, Model, column=None)`` loads records by the value of
one column (the primary key by default) with one ``SELECT ... WHERE column
IN (...)`` per batch::

    post = dataloader.with_(RecordSource, session, Post).load(post_id)

``AssociationSource(session, Model, "relationship")`` loads one relationship
of many instances with one query per batch, fills each instance's attribute
as if SQLAlchemy had loaded it (nothing is marked dirty, and a later access
of the attribute issues no SQL), and returns what the attribute holds::

    comments = dataloader.with_(AssociationSource, session, Post, "comments").load(post)

Both use the session they are given and keep nothing beyond the life of the
dataloader.  The instances themselves are the cache of an
``AssociationSource``: a loaded attribute is returned as it is, without a
batch; an unloaded or expired one (``session.commit()`` expires everything)
is loaded in the next batch.  The related records an ``AssociationSource``
loads go into the cache of ``RecordSource(session, RelatedModel)`` of the
same dataloader (graphql-ruby warms ``ActiveRecordSource`` the same way),
and a many-to-one relationship is loaded *through* that ``RecordSource``, so
``post.author`` and ``RecordSource(session, User).load(user_id)`` share one
query and one cache.

A ``Session`` runs one statement at a time.  Under ``AsyncDataloader`` the
fetches of different sources run concurrently, so the sources of this module
take turns on a session (per dataloader); keep ``blocking = False`` on them
(a ``Session`` must not be used from the thread pool).

``batch_lazy_loads(Base)`` batches the ORM's own lazy loads, with no change
to models or code: inside a job of ``Dataloader`` or ``AsyncDataloader``,
``post.author`` that would emit a lazy ``SELECT`` loads through
``AssociationSource`` instead (theory of operation: the comment above
:func:`batch_lazy_loads`).
"""

from __future__ import annotations

import sys
import threading
import uuid
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Dict, Hashable, Iterable, Iterator, List, Optional, Set, Tuple

from sqlalchemy import event, select, tuple_
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import MultipleResultsFound
from sqlalchemy.orm import (
    InstanceState,
    LoaderCallableStatus,
    Mapper,
    PassiveFlag,
    QueryableAttribute,
    RelationshipDirection,
    RelationshipProperty,
    Session,
    aliased,
    registry,
    scoped_session,
    strategies,
)
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.exc import UnmappedColumnError

from ._errors import (
    ConfigurationError,
    FiberloaderTypeError,
    KeyTypeError,
    SourceKeyError,
    SourceTypeError,
    class_name,
    short_repr,
)
from ._fibers import CURRENT
from ._null import NullDataloader
from ._orm import Same
from ._source import Request, Source

__all__ = [
    "RecordSource",
    "AssociationSource",
    "batch_lazy_loads",
    "MultipleRecordsError",
    "InstanceStateError",
]

_UNLOADED: Any = object()  # the relationship attribute is not loaded


class MultipleRecordsError(SourceKeyError, MultipleResultsFound):
    """``RecordSource`` found several rows for one key of a non-unique column.

    Only the keys with several rows fail (each ``load`` of such a key raises
    it); the other keys of the batch get their records.  Also a
    ``sqlalchemy.exc.MultipleResultsFound``, as ``Result.one()`` raises.
    """

    def __init__(self, message: str, data_source: Any = None, key: Any = None, count: int = 0) -> None:
        super().__init__(message, data_source, key)
        self.count = count


class InstanceStateError(SourceKeyError, ValueError):
    """``AssociationSource`` got an instance whose relationship it cannot load.

    The instance is detached, deleted, or in another session than the
    source's; SQLAlchemy would raise ``DetachedInstanceError`` for the first.
    """


# -- argument checks shared by both sources ---------------------------------


def _session_of(session: Any, source: str) -> Session:
    """The ``Session`` itself: a ``scoped_session`` gives its current session."""
    if isinstance(session, Session):
        return session
    if isinstance(session, scoped_session):
        current: Session = session()
        return current
    raise SourceTypeError(
        f"dataloader.with_({source}, session, ...) takes a sqlalchemy.orm.Session as its first "
        f"argument, but got {short_repr(session)}. Pass the request's Session (or a "
        "scoped_session)."
    )


def _mapper_of(model: Any, source: str) -> "Mapper[Any]":
    mapper = sa_inspect(model, raiseerr=False) if isinstance(model, type) else None
    if not isinstance(mapper, Mapper):
        raise SourceTypeError(
            f"dataloader.with_({source}, session, {short_repr(model)}, ...): "
            f"{short_repr(model)} is not a mapped SQLAlchemy class. Pass the model class "
            "itself (a class mapped with DeclarativeBase or registry.map_imperatively), "
            "not an instance, an aliased class or a Table."
        )
    return mapper


def _attribute_name(value: Any, model: type, what: str, source: str) -> str:
    """The attribute name of ``value``: a string, or a mapped attribute such as ``Post.title``."""
    if isinstance(value, str):
        return value
    if isinstance(value, QueryableAttribute):
        owner = value.class_
        if not (isinstance(owner, type) and issubclass(model, owner)):
            raise ConfigurationError(
                f"dataloader.with_({source}, session, {model.__name__}, {short_repr(value)}): "
                f"that {what} belongs to {short_repr(owner)}, not to {model.__name__}. Pass an "
                f"attribute of {model.__name__}, or its name."
            )
        return value.key
    raise SourceTypeError(
        f"dataloader.with_({source}, session, {model.__name__}, {short_repr(value)}): the "
        f"{what} must be an attribute name (a str) or a mapped attribute of {model.__name__} "
        f"such as {model.__name__}.{'id' if what == 'column' else 'comments'}, but got "
        f"{type(value).__name__}."
    )


def _primary_key_name(mapper: "Mapper[Any]", model: type, source: str) -> str:
    columns = mapper.primary_key
    if len(columns) != 1:
        names = ", ".join(mapper.get_property_by_column(c).key for c in columns)
        raise ConfigurationError(
            f"dataloader.with_({source}, session, {model.__name__}): {model.__name__} has a "
            f"composite primary key ({names}), and {source} loads by the value of one "
            f"column. Pass the column to load by: dataloader.with_({source}, session, "
            f"{model.__name__}, column=\"...\") naming a unique column of {model.__name__}, "
            "or write a Source whose keys are primary key tuples."
        )
    return mapper.get_property_by_column(columns[0]).key


def _column_name(mapper: "Mapper[Any]", model: type, column: Any, source: str) -> str:
    if column is None:
        return _primary_key_name(mapper, model, source)
    name = _attribute_name(column, model, "column", source)
    if name in mapper.column_attrs:
        return name
    if name in mapper.relationships:
        raise ConfigurationError(
            f"dataloader.with_({source}, session, {model.__name__}, {name!r}): "
            f"{model.__name__}.{name} is a relationship, not a column. Load it with "
            f"dataloader.with_(AssociationSource, session, {model.__name__}, {name!r})"
            f".load(instance), or load by one of the columns: {_names(mapper.column_attrs)}."
        )
    raise ConfigurationError(
        f"dataloader.with_({source}, session, {model.__name__}, {name!r}): "
        f"{model.__name__} has no column attribute {name!r}. Its columns are: "
        f"{_names(mapper.column_attrs)}."
    )


def _names(properties: Iterable[Any]) -> str:
    names = [repr(prop.key) for prop in properties]
    return ", ".join(names) if names else "(none)"


def _string_cast(mapper: "Mapper[Any]", name: str) -> Optional[Callable[[str], Any]]:
    """How a str key becomes a value of the column: ``int`` for integers, ``UUID`` for UUIDs."""
    try:
        python_type = mapper.column_attrs[name].columns[0].type.python_type
    except NotImplementedError:
        return None
    if python_type is int or python_type is uuid.UUID:
        return python_type
    return None


# -- taking turns on a session under AsyncDataloader ------------------------


class _SessionTurns(Source[Any, Any]):
    """Not a data source: the lock with which fetches take turns on one session.

    Made by ``dataloader.with_(_SessionTurns, session)`` so that it lives
    exactly as long as the dataloader.  Only used under ``AsyncDataloader``
    (a gevent lock); its ``fetch`` is never called.
    """

    _holds_state = True

    def __init__(self, session: Session) -> None:
        from gevent.lock import Semaphore  # only made under AsyncDataloader: gevent is there

        self.lock = Semaphore()

    def fetch(self, keys: List[Any]) -> Any:  # pragma: no cover - nothing loads from it
        raise NotImplementedError("_SessionTurns holds a lock; it loads nothing")


@contextmanager
def _turn(source: "RecordSource | AssociationSource") -> Iterator[None]:
    """Hold the session for one statement (and its rows), if fetches run concurrently."""
    async_module = sys.modules.get("fiberloader._async")
    dataloader = source.dataloader
    if async_module is None or not isinstance(dataloader, async_module.AsyncDataloader):
        yield  # fetches run one after another: nothing to wait for
        return
    lock = dataloader.with_(_SessionTurns, source.session).lock
    with lock:
        yield


# -- RecordSource -------------------------------------------------------------


class RecordSource(Source[Any, Any]):
    """Records of ``model`` by the value of ``column`` (default: the primary key).

    ``dataloader.with_(RecordSource, session, Post)`` (batch parameters: the
    session, the model and the column's attribute name, so ``column=None``,
    ``"id"`` and ``Post.id`` share one instance).  Each batch is one
    ``SELECT ... FROM posts WHERE posts.id IN (...)`` on ``session``; results
    come in key order, ``None`` for a key without a row (and for the key
    ``None``).  The records are the session's own instances (its identity
    map), as ``session.get`` would return them.

    ``column`` must be unique for the keys loaded: a key that matches
    several rows fails with :class:`MultipleRecordsError` (the other keys
    of the batch do not).  A model with a composite primary key needs a
    ``column``.  A str key for an ``Integer`` or ``Uuid`` column is
    converted (GraphQL IDs arrive as strings), so ``load("1")`` and
    ``load(1)`` are one cache entry; keys are matched to rows by Python
    equality with the column's value.
    """

    def __init__(self, session: Any, model: type, column: Any = None) -> None:
        self.session = _session_of(session, "RecordSource")
        self.model = model
        self.mapper = _mapper_of(model, "RecordSource")
        #: The attribute name of the column keys are values of.
        self.column = _column_name(self.mapper, model, column, "RecordSource")
        self._from_str = _string_cast(self.mapper, self.column)
        # Keys of a single-column primary key can be found in the session's
        # identity map first, as session.get() does.
        primary_key = self.mapper.primary_key
        self._by_identity = len(primary_key) == 1 and self.mapper.get_property_by_column(primary_key[0]).key == self.column

    @classmethod
    def batch_key_for(cls, session: Any, model: type, column: Any = None) -> Hashable:
        name = _column_name(_mapper_of(model, "RecordSource"), model, column, "RecordSource")
        return (_session_of(session, "RecordSource"), model, name)

    def result_key_for(self, key: Any) -> Hashable:
        from_str = self._from_str
        if from_str is not None and type(key) is str:
            try:
                return from_str(key)  # type: ignore[no-any-return]
            except ValueError:
                return key  # not a value of the column: no row will match it
        return key  # type: ignore[no-any-return]

    def normalize_fetch_key(self, key: Any) -> Any:
        return self.result_key_for(key)

    def fetch(self, keys: List[Any]) -> List[Any]:
        values = [key for key in keys if key is not None]  # NULL IN (...) matches no row
        found: Dict[Any, Any] = {}
        if self._by_identity:  # what the session holds needs no SQL
            values = self._from_identity_map(values, found)
        if not values:
            return [found.get(key) for key in keys]
        statement: Any = select(self.model).where(getattr(self.model, self.column).in_(values))
        with _turn(self):
            records = self.session.scalars(statement).unique().all()
        counts: Dict[Any, int] = {}
        for record in records:
            value = getattr(record, self.column)
            if value in found:
                counts[value] = counts.get(value, 1) + 1
            else:
                found[value] = record
        if not counts:
            return [found.get(key) for key in keys]
        return [self._several(key, counts[key]) if key in counts else found.get(key) for key in keys]

    def _from_identity_map(self, values: List[Any], found: Dict[Any, Any]) -> List[Any]:
        """Put the records the session holds into ``found``; return the other values.

        As ``session.get()``: an instance in the identity map is returned as
        it is, unless it is expired (then it is selected again, which also
        tells whether its row still exists) or deleted.
        """
        identity_map = self.session.identity_map
        if not identity_map:
            return values
        identity_key = self.mapper.identity_key_from_primary_key
        rest = []
        for value in values:
            instance = identity_map.get(identity_key((value,)))
            if instance is None or not isinstance(instance, self.model):
                rest.append(value)
                continue
            state: InstanceState[Any] = sa_inspect(instance)
            if state.expired or state.deleted or state.was_deleted:
                rest.append(value)
            else:
                found[value] = instance
        return rest

    def _several(self, key: Any, count: int) -> MultipleRecordsError:
        model = self.model.__name__
        return MultipleRecordsError(
            f"{self!r}.load({short_repr(key)}): {count} rows of {model} have "
            f"{self.column} == {short_repr(key)}, and RecordSource gives one record per key. "
            f"Load by a unique column (the default is the primary key), or write a Source whose "
            "fetch returns a list of records per key.",
            data_source=self,
            key=key,
            count=count,
        )

    def __repr__(self) -> str:
        return f"{class_name(type(self))}(session, {self.model.__name__}, {self.column!r})"


# -- AssociationSource --------------------------------------------------------


class AssociationSource(Source[Any, Any]):
    """The value of one relationship of instances of ``model``, loaded in batches.

    ``dataloader.with_(AssociationSource, session, Post, "comments")`` (or
    ``Post.comments``); keys are instances of ``Post`` in ``session``.
    Returns what ``post.comments`` holds once loaded: a list (the
    relationship's collection) for one-to-many and many-to-many, the related
    instance or ``None`` for many-to-one and one-to-one.  Collections are
    ordered by the relationship's ``order_by``, then by primary key.

    One batch is one query: for a many-to-one relationship on a foreign key,
    a ``RecordSource`` load of the foreign key values; otherwise a ``SELECT``
    of the related rows joined to the instances' rows through the
    relationship (through the secondary table for many-to-many), for the
    instances' primary keys.  Each instance's attribute is then set with
    ``set_committed_value``: it is not marked dirty, and accessing it issues
    no SQL.

    An instance whose relationship is already loaded needs no batch: ``load``
    returns the attribute as it is.  An instance not yet in the database
    (transient or pending) gets what SQLAlchemy gives it without SQL (an
    empty collection, ``None``).  ``merge({instance: value})`` sets the
    attribute as a load would.  Related records with a single-column primary
    key are merged into ``RecordSource(session, RelatedModel)``.
    """

    def __init__(self, session: Any, model: type, relationship: Any) -> None:
        self.session = _session_of(session, "AssociationSource")
        self.model = model
        self.mapper = _mapper_of(model, "AssociationSource")
        self.relationship = _relationship_of(self.mapper, model, relationship)
        #: The relationship's attribute name.
        self.name: str = self.relationship.key
        self.target: "Mapper[Any]" = self.relationship.mapper
        self._foreign_key = _foreign_key_columns(self.mapper, self.relationship)

    @classmethod
    def batch_key_for(cls, session: Any, model: type, relationship: Any) -> Hashable:
        name = _attribute_name(relationship, model, "relationship", "AssociationSource")
        return (_session_of(session, "AssociationSource"), model, name)

    def result_key_for(self, key: Any) -> Hashable:
        if not isinstance(key, self.model):
            raise self._not_an_instance(key)
        return Same(key)

    # -- the cache is the instance: loaded attributes need no batch ----------

    def load(self, key: Any) -> Any:
        value = self._loaded(key, "load")
        if value is not _UNLOADED:
            return value
        return super().load(key)

    def load_all(self, keys: Iterable[Any], return_exceptions: bool = False) -> List[Any]:
        keys = list(keys)
        values = [self._loaded(key, "load_all") for key in keys]
        missing = [key for key, value in zip(keys, values) if value is _UNLOADED]
        if not missing:
            return values
        fetched = iter(super().load_all(missing, return_exceptions))
        return [next(fetched) if value is _UNLOADED else value for value in values]

    def request(self, key: Any) -> "Request[Any, Any]":
        value = self._loaded(key, "request")
        if value is not _UNLOADED and self.dataloader is not None:
            Source.merge(self, {key: value})  # cached, so the handle is ready at once
        return super().request(key)

    def merge(self, values: Any) -> None:
        """Cache ``{instance: value}`` and set each instance's attribute to its value."""
        for key in values:
            self.result_key_for(key)  # the same error as load for a wrong key, before any change
        for key, value in values.items():
            if not isinstance(value, Exception):
                set_committed_value(key, self.name, value)
        super().merge({key: self._attribute(key, value) for key, value in values.items()})

    def _attribute(self, instance: Any, value: Any) -> Any:
        if isinstance(value, Exception):
            return value
        return sa_inspect(instance).dict.get(self.name, value)

    def _loaded(self, key: Any, method: str) -> Any:
        """The attribute's value if it needs no SQL, else ``_UNLOADED``; raise for a bad key."""
        self.result_key_for(key)  # the same error as load for a wrong key
        state: InstanceState[Any] = sa_inspect(key)
        value = state.dict.get(self.name, _UNLOADED)
        if value is not _UNLOADED:
            return value
        problem = self._problem(key, state, method)
        if problem is not None:
            raise problem
        if state.transient or state.pending:
            return getattr(key, self.name)  # not in the database yet: SQLAlchemy loads nothing
        if self.dataloader is not None:
            Source.clear(self, key)  # a value cached before the attribute was expired
        return _UNLOADED

    def _problem(self, key: Any, state: "InstanceState[Any]", method: str) -> Optional[InstanceStateError]:
        if state.transient or state.pending:
            return None
        if state.detached or state.deleted:
            how = "detached (it belongs to no Session)" if state.detached else "deleted"
            return InstanceStateError(
                f"{self!r}.{method}({short_repr(key)}): the instance is {how}, so its "
                f"{self.name!r} cannot be loaded. Load instances in the session the source "
                "was made with, or bring this one back with session.add() or session.merge().",
                data_source=self,
                key=key,
            )
        if state.session is not self.session:
            return InstanceStateError(
                f"{self!r}.{method}({short_repr(key)}): the instance is in another Session "
                "than the source's. Use the source of its own session, "
                f"dataloader.with_(AssociationSource, its_session, {self.model.__name__}, "
                f"{self.name!r}), or load the instance in this source's session.",
                data_source=self,
                key=key,
            )
        return None

    def _not_an_instance(self, key: Any) -> KeyTypeError:
        model = self.model.__name__
        return KeyTypeError(
            f"{self!r} loads the {self.name!r} of {model} instances, but got "
            f"{short_repr(key)} ({type(key).__name__}). Pass a {model} instance; to load "
            f"by primary key, use dataloader.with_(RecordSource, session, {model}).load(id) "
            "first.",
            data_source=self,
            key=key,
        )

    # -- the batch ------------------------------------------------------------

    def fetch(self, keys: List[Any]) -> List[Any]:
        results: List[Any] = [None] * len(keys)
        todo: List[Tuple[int, Any, "InstanceState[Any]"]] = []
        for index, instance in enumerate(keys):
            state: InstanceState[Any] = sa_inspect(instance)
            value = state.dict.get(self.name, _UNLOADED)
            if value is _UNLOADED:
                problem = self._problem(instance, state, "load")  # the session may have changed
                if problem is not None:
                    value = problem
                elif state.transient or state.pending:
                    value = getattr(instance, self.name)
                else:
                    todo.append((index, instance, state))
                    continue
            results[index] = value
        if todo:
            foreign_key = self._foreign_key
            # An expired foreign key would be refreshed one instance at a time: join instead.
            if foreign_key is not None and all(foreign_key[0] in state.dict for _, _, state in todo):
                values = self._by_foreign_key([instance for _, instance, _ in todo])
            else:
                values = self._by_join([state for _, _, state in todo])
            for (index, instance, state), value in zip(todo, values):
                set_committed_value(instance, self.name, value)
                results[index] = state.dict.get(self.name, value)
            _loaded_together(self.dataloader, values, bool(self.relationship.uselist))
        return results

    def _by_foreign_key(self, instances: List[Any]) -> List[Any]:
        """Many-to-one on a foreign key: the targets, through RecordSource (cache shared)."""
        local, remote = self._foreign_key  # type: ignore[misc]
        values = [getattr(instance, local) for instance in instances]
        records = self.dataloader.with_(  # type: ignore[union-attr]
            RecordSource, self.session, self.target.class_, remote
        ).load_all([value for value in values if value is not None])
        by_value = iter(records)
        return [None if value is None else next(by_value) for value in values]

    def _by_join(self, states: List["InstanceState[Any]"]) -> List[Any]:
        """One SELECT of the related rows joined to the instances' rows, by primary key."""
        relationship = self.relationship
        parent: Any = self.model
        statement: Any
        if set(self.mapper.tables) & set(self.target.tables):
            # Self-referential: alias the instances' side, so that the target and the
            # relationship's order_by keep their table names.
            parent = aliased(self.model)
        key_columns = [
            getattr(parent, self.mapper.get_property_by_column(column).key)
            for column in self.mapper.primary_key
        ]
        identities: List[Tuple[Any, ...]] = [state.identity for state in states]  # type: ignore[misc]
        unique = list(dict.fromkeys(identities))
        if len(key_columns) == 1:
            where = key_columns[0].in_([identity[0] for identity in unique])
        else:
            where = tuple_(*key_columns).in_(unique)
        order = list(self.relationship.order_by or ()) + list(self.target.primary_key)
        statement = select(*key_columns, self.target.class_).select_from(parent)
        if relationship.secondary is not None and parent is self.model:
            # Many-to-many: join the secondary table itself, not an alias of it (as a join
            # through the relationship would), so an order_by on its columns works.
            statement = statement.join(relationship.secondary, relationship.primaryjoin).join(
                self.target.class_, relationship.secondaryjoin
            )
        else:
            statement = statement.join(getattr(parent, self.name))
        statement = statement.where(where).order_by(*order)
        with _turn(self):
            rows = self.session.execute(statement).unique().all()
        width = len(key_columns)
        related: Dict[Tuple[Any, ...], List[Any]] = {}
        for row in rows:
            related.setdefault(tuple(row[:width]), []).append(row[width])
        self._warm_record_source(row[width] for row in rows)
        if self.relationship.uselist:
            return [related.get(identity, []) for identity in identities]
        return [related.get(identity, [None])[0] for identity in identities]

    def _warm_record_source(self, records: Iterable[Any]) -> None:
        """Put the related records into ``RecordSource(session, RelatedModel)``'s cache."""
        if len(self.target.primary_key) != 1:
            return  # RecordSource loads a composite primary key model only by a named column
        by_key = {}
        for record in records:
            identity = sa_inspect(record).identity
            if identity is not None:
                by_key[identity[0]] = record
        if by_key:
            self.dataloader.with_(  # type: ignore[union-attr]
                RecordSource, self.session, self.target.class_
            ).merge(by_key)

    def __repr__(self) -> str:
        return f"{class_name(type(self))}(session, {self.model.__name__}, {self.name!r})"


def _relationship_of(mapper: "Mapper[Any]", model: type, relationship: Any) -> "RelationshipProperty[Any]":
    name = _attribute_name(relationship, model, "relationship", "AssociationSource")
    label = f"dataloader.with_(AssociationSource, session, {model.__name__}, {name!r})"
    if name not in mapper.relationships:
        if name in mapper.column_attrs:
            hint = (
                f"{model.__name__}.{name} is a column, not a relationship: read it from the "
                "instance, or load records by a column value with RecordSource."
            )
        else:
            hint = f"{model.__name__} has no relationship {name!r}."
        raise ConfigurationError(
            f"{label}: {hint} The relationships of {model.__name__} are: "
            f"{_names(mapper.relationships)}. Pass one of their names (or the attribute, "
            f"such as {model.__name__}.<relationship>)."
        )
    prop = mapper.relationships[name]
    if prop.lazy in ("dynamic", "write_only"):
        raise ConfigurationError(
            f"{label}: {model.__name__}.{name} is a {prop.lazy!r} relationship, which never "
            "holds its loaded rows, so there is nothing to fill in. Query it directly, or map "
            "a second, viewonly relationship to load in batches."
        )
    return prop


def _foreign_key_columns(mapper: "Mapper[Any]", prop: "RelationshipProperty[Any]") -> Optional[Tuple[str, str]]:
    """``(local attribute, target attribute)`` for a plain many-to-one on one column, else None.

    Plain: the join condition is exactly ``local_column == target_column``,
    so the targets are the ``RecordSource(session, Target, target_column)``
    records of the local values.
    """
    if prop.direction is not RelationshipDirection.MANYTOONE or prop.secondary is not None:
        return None
    pairs = prop.local_remote_pairs or []
    if len(pairs) != 1:
        return None
    local, remote = pairs[0]
    join = prop.primaryjoin
    if not (join.compare(local == remote) or join.compare(remote == local)):
        return None  # extra criteria in the join: query through the relationship
    try:
        local_name = mapper.get_property_by_column(local).key
        remote_name = prop.mapper.get_property_by_column(remote).key
    except UnmappedColumnError:
        return None
    return local_name, remote_name


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
_enabled_classes: "weakref.WeakSet[type]" = weakref.WeakSet()
_enabled_registries: "weakref.WeakSet[registry]" = weakref.WeakSet()
# mapper -> whether its lazy loads batch; emptied by every batch_lazy_loads call
_enabled_mappers: "weakref.WeakKeyDictionary[Mapper[Any], bool]" = weakref.WeakKeyDictionary()
_PEERS = ("fiberloader.sqlalchemy", "peers")  # a query's peer group, in its QueryContext.attributes


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
    _enabled_mappers.clear()


def _targets_of(target: Any) -> "weakref.WeakSet[Any]":
    """The set ``target`` belongs in: the registries or the classes."""
    if isinstance(target, registry):
        return _enabled_registries
    if isinstance(target, type) and (
        isinstance(sa_inspect(target, raiseerr=False), Mapper)
        or isinstance(getattr(target, "registry", None), registry)
    ):
        return _enabled_classes
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
        event.listen(Mapper, "load", _record_load, raw=True)


def _enabled(mapper: "Mapper[Any]") -> bool:
    """Whether ``mapper``'s class is under an enabled target (cached per mapper)."""
    known = _enabled_mappers.get(mapper)
    if known is None:
        known = mapper.registry in _enabled_registries or any(
            cls in _enabled_classes for cls in mapper.class_.__mro__
        )
        _enabled_mappers[mapper] = known
    return known


def _batching(dataloader: Any) -> bool:
    """Whether ``dataloader`` batches and runs the calling code (a job or a fetch)."""
    return not isinstance(dataloader, NullDataloader) and bool(dataloader._in_job())


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
    if dataloader is not None and _plain_load(strategy, session, state, passive, loadopt, rest) and _batching(dataloader):
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
        and _enabled(state.mapper)
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
    group = dataloader.with_(_PeerBook).groups.get(state)
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

    Made by ``dataloader.with_(_PeerBook)``, so that it lives exactly as
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


def _record_load(state: "InstanceState[Any]", context: Any) -> None:
    """The ``load`` event: instances one query loads in a batching job are peers.

    Cheap when it does not apply: a context variable, then a cached flag.
    """
    dataloader = CURRENT.get()
    if dataloader is None or not _enabled(state.mapper) or not _batching(dataloader):
        return
    attributes = context.attributes
    entry = attributes.get(_PEERS)
    if entry is None:
        entry = attributes[_PEERS] = (dataloader.with_(_PeerBook), _Peers())
    book, group = entry
    book.add(group, state)


def _loaded_together(dataloader: Any, values: List[Any], uselist: bool) -> None:
    """Make the instances one ``AssociationSource`` batch returned peers of each other.

    So that ``post.comments``, then ``comment.author`` for each comment, is
    two statements; also the instances the session held already (the
    ``load`` event records only new ones).
    """
    if not (_enabled_classes or _enabled_registries) or dataloader is None or not _batching(dataloader):
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
            if _enabled(state.mapper):
                if book is None:
                    book = dataloader.with_(_PeerBook)
                book.add(group, state)
