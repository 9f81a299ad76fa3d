"""SQLAlchemy's ORM sources (exported by ``fiberloader.sqlalchemy``; see its docstring).

``RecordSource`` and ``AssociationSource``, their errors and argument
checks, and the turns fetches take on a session under ``AsyncDataloader``.
"""

from __future__ import annotations

import sys
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Dict, Hashable, Iterable, Iterator, List, Optional, Tuple

from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select, tuple_
from sqlalchemy.exc import MultipleResultsFound
from sqlalchemy.orm import (
    InstanceState,
    Mapper,
    QueryableAttribute,
    RelationshipDirection,
    RelationshipProperty,
    Session,
    aliased,
    scoped_session,
)
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import UnmappedColumnError

from ._errors import (
    ConfigurationError,
    KeyTypeError,
    SourceKeyError,
    SourceTypeError,
    class_name,
    short_repr,
)
from ._orm import Same
from ._source import Request, Source
from ._sqlalchemy_peers import loaded_together

__all__ = ["RecordSource", "AssociationSource", "MultipleRecordsError", "InstanceStateError"]

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
            loaded_together(self.dataloader, values, bool(self.relationship.uselist))
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
