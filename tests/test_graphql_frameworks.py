"""The execution context under Graphene 3, Strawberry (sync) and Ariadne (sync).

Each framework builds its own graphql-core schema; fiberloader plugs in as
``execution_context_class``.  Each test checks the result and that the
loads of the whole query were batched: one fetch per source per level.
Then fiberloader's errors (``tests/test_graphql_errors.py``'s cases, and the
SQLAlchemy sources') as located errors of their fields in each framework:
CI runs this file on graphql-core 3.2 only, where all of them are installed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional

import ariadne
import graphene
import pytest
import strawberry
from sqlalchemy import ForeignKey, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.pool import StaticPool

import fiberloader.sqlalchemy
from fiberloader import Source, current_dataloader
from fiberloader.graphql import DataloaderExecutionContext, graphql_sync
from fiberloader.sqlalchemy import AssociationSource, InstanceStateError, MultipleRecordsError, RecordSource

from .test_graphql_errors import (
    ADVICE,
    ERROR_CASES,
    QUERY as ERROR_QUERY,
    SETTINGS,
    assert_no_graphql_error_attributes,
    assert_only_x_failed,
    constructed,
    context_for,
    coroutine,
    error_classes,
    run,
    running,
    schema_with,
)

AUTHORS = {1: "ada", 2: "grace", 3: "barbara"}
BOOKS = [{"title": f"book {i}", "author_id": i % 3 + 1} for i in range(6)]
QUERY = "{ books { title author { name } } }"
EXPECTED = {"books": [{"title": b["title"], "author": {"name": AUTHORS[b["author_id"]]}} for b in BOOKS]}


class Authors(Source):
    calls: List[List[int]] = []

    def fetch(self, ids: List[int]) -> List[Any]:
        Authors.calls.append(sorted(ids))
        return [{"name": AUTHORS[i]} for i in ids]


def author_of(book: Any, handle: bool = False) -> Any:
    source = current_dataloader().with_(Authors)  # type: ignore[union-attr]
    author_id = book["author_id"] if isinstance(book, dict) else book.author_id
    return source.request(author_id) if handle else source.load(author_id)


def test_graphene_3() -> None:
    class Author(graphene.ObjectType):
        name = graphene.String()

        def resolve_name(parent: Any, info: Any) -> str:
            return parent["name"]  # type: ignore[no-any-return]

    class Book(graphene.ObjectType):
        title = graphene.String()
        author = graphene.Field(Author)

        def resolve_title(parent: Any, info: Any) -> str:
            return parent["title"]  # type: ignore[no-any-return]

        def resolve_author(parent: Any, info: Any) -> Any:
            return author_of(parent)

    class Query(graphene.ObjectType):
        books = graphene.List(Book)

        def resolve_books(root: Any, info: Any) -> Any:
            return BOOKS

    Authors.calls = []
    result = graphene.Schema(query=Query).execute(QUERY, execution_context_class=DataloaderExecutionContext)
    assert result.errors is None and result.data == EXPECTED
    assert Authors.calls == [[1, 2, 3]]


@strawberry.type
class StrawberryAuthor:
    name: str


@strawberry.type
class StrawberryBook:
    title: str
    author_id: strawberry.Private[int]

    @strawberry.field
    def author(self) -> Optional[StrawberryAuthor]:
        row = author_of(self)
        return StrawberryAuthor(name=row["name"])


@strawberry.type
class StrawberryQuery:
    @strawberry.field
    def books(self) -> List[StrawberryBook]:
        return [StrawberryBook(title=b["title"], author_id=b["author_id"]) for b in BOOKS]


def test_strawberry_sync() -> None:
    # Strawberry resolves annotations from module globals: the types live above.
    schema = strawberry.Schema(query=StrawberryQuery, execution_context_class=DataloaderExecutionContext)
    Authors.calls = []
    result = schema.execute_sync(QUERY)
    assert result.errors is None and result.data == EXPECTED
    assert Authors.calls == [[1, 2, 3]]


def test_ariadne_sync_with_request_handles() -> None:
    type_defs = ariadne.gql("""
        type Query { books: [Book!]! }
        type Book { title: String! author: Author }
        type Author { name: String! }
    """)
    query = ariadne.QueryType()
    book = ariadne.ObjectType("Book")
    query.set_field("books", lambda *_: BOOKS)
    book.set_field("author", lambda parent, info: author_of(parent, handle=True))  # the fast path
    schema = ariadne.make_executable_schema(type_defs, query, book)
    Authors.calls = []
    ok, result = ariadne.graphql_sync(schema, {"query": QUERY}, execution_context_class=DataloaderExecutionContext)
    assert ok and "errors" not in result
    assert result["data"] == EXPECTED
    assert Authors.calls == [[1, 2, 3]]


# -- fiberloader's errors in a field of each framework ---------------------------------


@pytest.mark.parametrize("case", ERROR_CASES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_graphene_3_locates_fiberloader_errors(case: str, setting: str) -> None:
    resolve, error_class, message = ERROR_CASES[case]

    class Query(graphene.ObjectType):
        a = graphene.String(id=graphene.Int())
        b = graphene.String()

        def resolve_a(root: Any, info: Any, id: int) -> Any:
            return resolve(root, info, id=id)

        def resolve_b(root: Any, info: Any) -> str:
            return "b"

    result = graphene.Schema(query=Query).execute(ERROR_QUERY, execution_context_class=context_for(setting))
    assert_only_x_failed(result.data, result.errors, error_class, message)


STRAWBERRY_RESOLVE_A: List[Callable[..., Any]] = []  # the case's resolver (the type lives at module level)


@strawberry.type
class StrawberryErrorsQuery:
    @strawberry.field
    def a(self, id: int) -> Optional[str]:
        return STRAWBERRY_RESOLVE_A[0](self, None, id=id)  # type: ignore[no-any-return]

    @strawberry.field
    def b(self) -> Optional[str]:
        return "b"


@pytest.mark.parametrize("case", ERROR_CASES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_strawberry_sync_locates_fiberloader_errors(case: str, setting: str) -> None:
    resolve, error_class, message = ERROR_CASES[case]
    STRAWBERRY_RESOLVE_A[:] = [resolve]
    schema = strawberry.Schema(query=StrawberryErrorsQuery, execution_context_class=context_for(setting))
    result = schema.execute_sync(ERROR_QUERY)
    assert_only_x_failed(result.data, result.errors, error_class, message)


@pytest.mark.parametrize("case", ERROR_CASES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_ariadne_sync_locates_fiberloader_errors(case: str, setting: str) -> None:
    resolve, error_class, message = ERROR_CASES[case]
    query = ariadne.QueryType()
    query.set_field("a", resolve)
    query.set_field("b", lambda *_: "b")
    schema = ariadne.make_executable_schema("type Query { a(id: Int): String b: String }", query)
    errors: List[Any] = []

    def keep(error: Any, debug: bool = False) -> Any:
        errors.append(error)
        return error.formatted

    ok, result = ariadne.graphql_sync(
        schema, {"query": ERROR_QUERY}, error_formatter=keep, execution_context_class=context_for(setting)
    )
    assert ok
    assert_only_x_failed(result["data"], errors, error_class, message)
    assert result["errors"] == [error.formatted for error in errors]


def test_an_async_resolver_in_a_graphene_schema_is_a_located_error_that_says_what_to_do() -> None:
    class Query(graphene.ObjectType):
        title = graphene.String()
        b = graphene.String()

        def resolve_title(root: Any, info: Any) -> Any:
            return coroutine("a title")

        def resolve_b(root: Any, info: Any) -> str:
            return "b"

    schema = graphene.Schema(query=Query)
    data, errors = run(lambda: schema.execute("{ title b }", execution_context_class=DataloaderExecutionContext))
    assert data == {"title": None, "b": "b"}
    (error,) = errors
    assert error.path == ["title"] and error.message.endswith(ADVICE)
    assert "The resolver of Query.title returned an awaitable" in error.message


# -- the SQLAlchemy sources' errors --------------------------------------------------


class OrmBase(DeclarativeBase):
    pass


class Team(OrmBase):
    __tablename__ = "teams"
    id: Mapped[int] = mapped_column(primary_key=True)
    members: Mapped[List["Member"]] = relationship(back_populates="team")


class Member(OrmBase):
    __tablename__ = "members"
    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    team: Mapped[Team] = relationship(back_populates="members")


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    OrmBase.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Team(id=1), Member(id=1, team_id=1), Member(id=2, team_id=1)])
        session.commit()
        yield session
    engine.dispose()


@pytest.mark.parametrize("setting", SETTINGS)
def test_the_sqlalchemy_sources_errors_are_located_errors_of_their_fields(setting: str, session: Session) -> None:
    by_team = schema_with(lambda _, info, id: running().with_(RecordSource, session, Member, "team_id").load(id))
    result = graphql_sync(by_team, ERROR_QUERY, execution_context_class=context_for(setting))
    assert_only_x_failed(result.data, result.errors, MultipleRecordsError, "2 rows of Member have team_id == 1")

    detached = session.get(Member, 1)
    session.expunge(detached)
    team_of = schema_with(lambda _, info, id: running().with_(AssociationSource, session, Member, "team").load(detached))
    result = graphql_sync(team_of, ERROR_QUERY, execution_context_class=context_for(setting))
    assert_only_x_failed(result.data, result.errors, InstanceStateError, "the instance is detached")


def test_no_error_of_the_sqlalchemy_sources_has_an_attribute_that_graphql_core_reads() -> None:
    classes = error_classes(fiberloader.sqlalchemy)
    assert {MultipleRecordsError, InstanceStateError} <= set(classes)
    for cls in classes:
        assert_no_graphql_error_attributes(constructed(cls))
