"""The execution context under Graphene 3, Strawberry (sync) and Ariadne (sync).

Each framework builds its own graphql-core schema; fiberloader plugs in as
``execution_context_class``.  Each test checks the result and that the
loads of the whole query were batched: one fetch per source per level.
"""

from __future__ import annotations

from typing import Any, List, Optional

import ariadne
import graphene
import strawberry

from fiberloader import Source, current_dataloader
from fiberloader.graphql import DataloaderExecutionContext

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
