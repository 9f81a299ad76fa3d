"""fiberloader.graphql: same results as plain graphql-core, with batched loads.

The reference for every query is plain graphql-core's synchronous
execution, with the resolvers' loads fetched one key at a time (under
NullDataloader).  fiberloader's execution context must give the same data
(key order included), the same errors (messages, locations, paths) -- and
one fetch per source per level of dependency.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any, Dict, List, Type

import pytest
from graphql import (
    GraphQLField,
    GraphQLInt,
    GraphQLList,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLString,
    build_schema,
    execute,
    parse,
)

from fiberloader import Dataloader, NullDataloader, Request, RequestAll, Source, current_dataloader
from fiberloader.graphql import GRAPHQL_CORE_3_3, DataloaderExecutionContext, graphql_sync

from .conftest import live_greenlets

if GRAPHQL_CORE_3_3:  # graphql-core 3.3 renamed ExecutionContext to Executor
    from graphql import Executor as ExecutionContext

    CONTEXT = "executor_class"
else:
    from graphql import ExecutionContext

    CONTEXT = "execution_context_class"

USERS = {i: {"id": i, "name": f"user {i}"} for i in range(12)}
POSTS = [{"id": i, "title": f"post {i}", "author_id": i % 7} for i in range(20)]
COMMENTS = {p["id"]: [{"id": p["id"] * 10 + j, "body": f"c{p['id']}.{j}", "author_id": (p["id"] + j) % 12}
                      for j in range(3)] for p in POSTS}


class Log:
    calls: List[Any] = []


class Users(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        Log.calls.append(("users", sorted(keys)))
        return [USERS.get(k) or KeyError(f"no user {k}") for k in keys]


class CommentsOf(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        Log.calls.append(("comments", sorted(keys)))
        return [COMMENTS.get(k, []) for k in keys]


def load(source: Type[Source], key: Any) -> Any:
    return current_dataloader().with_(source).load(key)  # type: ignore[union-attr]


def request(source: Type[Source], key: Any) -> Any:
    return current_dataloader().with_(source).request(key)  # type: ignore[union-attr]


SDL = """
scalar Upper

interface Node { id: Int! }
union Thing = User | Post

type Query {
  posts(first: Int): [Post!]!
  post(id: Int!): Post
  node(kind: String!, id: Int!): Node
  things: [Thing]
  generated: [User]
  maybeUsers: [User]
  shout(text: String!): Upper
  failing: String
  strict: String!
  usersH(ids: [Int!]!): [User]
  nodeH(id: Int!): Node
}

type Mutation { rename(id: Int!, name: String!): User renameH(id: Int!, name: String!): User }

type Post implements Node {
  id: Int!
  title: String!
  author: User
  strictAuthor: User!
  comments: [Comment!]!
  laterError: String
  missingAuthor: User!
  firstAuthorMissing: User!
  secondTitleNull: String!
  authorH: User
  strictAuthorH: User!
  commentsH: [Comment!]!
  missingAuthorH: User!
}

type Comment { id: Int! body: String! author: User authorH: User }

type User implements Node { id: Int! name: String! posts: [Post!]! }
"""


def make_schema() -> GraphQLSchema:
    schema = build_schema(SDL)
    query, post, comment, user = (schema.get_type(name) for name in ("Query", "Post", "Comment", "User"))
    fields = query.fields  # type: ignore[union-attr]
    fields["posts"].resolve = lambda _, info, first=None: POSTS[:first] if first else POSTS
    fields["post"].resolve = lambda _, info, id: next((p for p in POSTS if p["id"] == id), None)
    fields["node"].resolve = lambda _, info, kind, id: load(Users, id) if kind == "user" else POSTS[id]
    fields["things"].resolve = lambda _, info: [load(Users, 1), POSTS[2], None, load(Users, 3)]
    fields["generated"].resolve = lambda _, info: (load(Users, i) for i in range(4))
    fields["maybeUsers"].resolve = lambda _, info: [ValueError("no user"), USERS[2], ValueError("nor here")]
    fields["shout"].resolve = lambda _, info, text: text
    fields["failing"].resolve = lambda _, info: (_ for _ in ()).throw(ValueError("root failure"))
    fields["strict"].resolve = lambda _, info: None
    schema.get_type("Upper").serialize = lambda value: str(value).upper()  # type: ignore[union-attr]
    for node_type in ("Node", "Thing"):
        schema.get_type(node_type).resolve_type = lambda obj, info, t: (  # type: ignore[union-attr]
            "User" if "name" in obj else "Post"
        )
    pf = post.fields  # type: ignore[union-attr]
    pf["author"].resolve = lambda p, info: load(Users, p["author_id"])
    pf["strictAuthor"].resolve = lambda p, info: load(Users, p["author_id"] + 100 if p["id"] == 3 else p["author_id"])
    pf["comments"].resolve = lambda p, info: load(CommentsOf, p["id"])
    pf["laterError"].resolve = lambda p, info: (_ for _ in ()).throw(RuntimeError(f"later {p['id']}"))
    pf["missingAuthor"].resolve = lambda p, info: load(Users, 999) if p["id"] % 5 == 4 else load(Users, 1)
    pf["firstAuthorMissing"].resolve = lambda p, info: load(Users, 999 if p["id"] == 0 else 1)
    pf["secondTitleNull"].resolve = lambda p, info: None if p["id"] == 1 else p["title"]
    comment.fields["author"].resolve = lambda c, info: load(Users, c["author_id"])  # type: ignore[union-attr]
    # The same fields through request handles (the fast path):
    pf["authorH"].resolve = lambda p, info: request(Users, p["author_id"])
    pf["strictAuthorH"].resolve = lambda p, info: request(Users, p["author_id"] + 100 if p["id"] == 3 else p["author_id"])
    pf["commentsH"].resolve = lambda p, info: request(CommentsOf, p["id"])
    pf["missingAuthorH"].resolve = lambda p, info: request(Users, 999 if p["id"] % 5 == 4 else 1)
    comment.fields["authorH"].resolve = lambda c, info: request(Users, c["author_id"])  # type: ignore[union-attr]
    fields["usersH"].resolve = lambda _, info, ids: current_dataloader().with_(Users).request_all(ids)  # type: ignore[union-attr]
    fields["nodeH"].resolve = lambda _, info, id: request(Users, id)
    schema.mutation_type.fields["renameH"].resolve = lambda *a, **k: (rename(*a, **k), request(Users, k["id"]))[1]  # type: ignore[union-attr]
    user.fields["posts"].resolve = lambda u, info: [p for p in POSTS if p["author_id"] == u["id"]]  # type: ignore[union-attr]
    schema.mutation_type.fields["rename"].resolve = rename  # type: ignore[union-attr]
    return schema


RENAMED: List[Any] = []


def rename(_: Any, info: Any, id: int, name: str) -> Any:
    before = load(Users, id)["name"]
    USERS[id] = {**USERS[id], "name": name}
    current_dataloader().with_(Users).clear(id)  # type: ignore[union-attr]  # written: forget the old row
    RENAMED.append((before, name))
    return load(Users, id)


SCHEMA = make_schema()

QUERIES = {
    "nested lists": "{ posts { title author { name } comments { body author { name } } } }",
    "aliases and fragments": """
        { first: posts(first: 3) { ...P } again: posts(first: 2) { id a: author { n: name } } }
        fragment P on Post { id title author { name posts { id } } }""",
    "abstract types": "{ node(kind: \"user\", id: 4) { id ... on User { name } } things { ... on User { name } ... on Post { title author { name } } } }",
    "generator list": "{ generated { id name } }",
    "custom scalar": "{ shout(text: \"hello\") }",
    "nullable error beside loads": "{ failing posts(first: 4) { id author { name } } }",
    "non-null error nulls the post": "{ posts(first: 6) { id strictAuthor { name } comments { body } } }",
    "later sibling errors dropped after non-null failure": "{ post(id: 3) { strictAuthor { name } laterError author { name } } }",
    "non-null failure in list item nulls whole list": "{ posts { id missingAuthor { name } laterError } }",
    "non-null failure in the first item, after its load": "{ posts(first: 4) { id firstAuthorMissing { name } laterError } }",
    "non-null failure in an item, no load": "{ posts(first: 3) { id secondTitleNull } }",
    "non-null failure in an item, loads before it": "{ posts(first: 4) { author { name } secondTitleNull laterError } }",
    "nullable list items that fail": "{ maybeUsers { id author: posts { author { name } } } }",
    "non-null root field": "{ posts(first: 2) { id } strict }",
    "missing key is a located error": "{ posts(first: 5) { id missingAuthor { id } } }",
    # request handles, alone and mixed with plain loads:
    "handles: nested lists": "{ posts { title authorH { name } commentsH { body authorH { name } } } }",
    "handles mixed with loads": "{ posts { authorH { name } comments { authorH { name } author { id } } commentsH { author { name } } } }",
    "handles: request_all list": "{ usersH(ids: [3, 1, 3, 9]) { id name } }",
    "handles: abstract type": "{ nodeH(id: 5) { id ... on User { name } } }",
    "handles: non-null error nulls the post": "{ posts(first: 6) { id strictAuthorH { name } commentsH { body } } }",
    "handles: later siblings dropped": "{ post(id: 3) { strictAuthorH { name } laterError authorH { name } } }",
    "handles: failure in list item nulls list": "{ posts { id missingAuthorH { name } laterError } }",
    "handles: failure reaches the root": "{ posts(first: 5) { id missingAuthorH { id } } }",
    "handles: failure nulls nullable parent": "{ post(id: 4) { id missingAuthorH { name } authorH { name } } }",
    "handles: deep mix": "{ posts(first: 8) { commentsH { authorH { posts { authorH { name } strictAuthorH { id } } } } } }",
}


class Loading(ExecutionContext):
    """Plain graphql-core, except that a returned handle is loaded on the spot."""

    def complete_value(self, return_type: Any, field_nodes: Any, info: Any, path: Any, result: Any, *extra: Any) -> Any:
        if isinstance(result, (Request, RequestAll)):
            result = result.load()
        return super().complete_value(return_type, field_nodes, info, path, result, *extra)


def reference(query: str, variables: Any = None) -> Any:
    """Plain graphql-core, loads fetched one key at a time."""
    return NullDataloader.with_dataloading(
        lambda dl: execute(SCHEMA, parse(query), variable_values=variables, **{CONTEXT: Loading})
    )


def normal(result: Any) -> Any:
    errors = [error.formatted for error in result.errors or []]
    return json.dumps(result.data), sorted(json.dumps(e, sort_keys=True) for e in errors)


@pytest.fixture(params=["sync", "async", "null"])
def setting(request: Any) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", QUERIES)
def test_results_equal_plain_graphql_core(name: str, setting: str) -> None:
    query = QUERIES[name]
    want = reference(query)
    got = graphql_sync(SCHEMA, query, **{CONTEXT: type(
        "Ctx", (DataloaderExecutionContext,), {"dataloader_setting": setting})})
    assert normal(got) == normal(want)


def run_counted(query: str, setting: str = "sync") -> Any:
    Log.calls = []
    context_class = type("Ctx", (DataloaderExecutionContext,), {"dataloader_setting": setting})
    result = graphql_sync(SCHEMA, query, **{CONTEXT: context_class})
    return result, Log.calls


@pytest.mark.parametrize("setting", ["sync", "async"])
def test_one_fetch_per_source_per_level(setting: str) -> None:
    result, calls = run_counted(QUERIES["nested lists"], setting)
    assert not result.errors
    post_authors = sorted({p["author_id"] for p in POSTS})
    assert calls[0] == ("users", post_authors) or calls[0][0] == "comments"
    assert sorted(name for name, _ in calls) == ["comments", "users", "users"]
    assert ("comments", [p["id"] for p in POSTS]) in calls


def test_errors_keep_the_original_exception_and_siblings_resolve() -> None:
    result, _ = run_counted("{ failing posts(first: 2) { id author { name } } }")
    assert result.data["posts"] == [{"id": 0, "author": {"name": "user 0"}}, {"id": 1, "author": {"name": "user 1"}}]
    [error] = result.errors
    assert error.path == ["failing"] and isinstance(error.original_error, ValueError)


def test_fetch_error_is_the_fields_located_error_with_original_error() -> None:
    result, _ = run_counted("{ posts(first: 5) { id missingAuthor { id } } }")
    assert result.data is None  # non-null all the way up: the whole response is null
    [error] = result.errors
    assert error.path == ["posts", 4, "missingAuthor"]
    assert isinstance(error.original_error, KeyError)


def test_later_siblings_that_ran_early_do_not_add_errors() -> None:
    # post 3's strictAuthor waits for a key, so its later siblings run first;
    # when strictAuthor fails, the post is nulled and graphql-core would
    # never have run laterError: its error must not appear.
    result, _ = run_counted(QUERIES["later sibling errors dropped after non-null failure"])
    assert result.data == {"post": None}
    assert [e.path for e in result.errors] == [["post", "strictAuthor"]]


def test_mutations_run_serially_each_seeing_the_last(setting: str) -> None:
    RENAMED.clear()
    saved = dict(USERS)
    try:
        query = 'mutation { a: rename(id: 1, name: "one") { name } b: rename(id: 1, name: "uno") { name } }'
        context_class = type("Ctx", (DataloaderExecutionContext,), {"dataloader_setting": setting})
        result = graphql_sync(SCHEMA, query, **{CONTEXT: context_class})
    finally:
        USERS.clear()
        USERS.update(saved)
    assert result.data == {"a": {"name": "one"}, "b": {"name": "uno"}}
    assert RENAMED == [("user 1", "one"), ("one", "uno")]


def test_runs_inside_an_already_running_dataloader_and_batches_with_it() -> None:
    def view(dl: Dataloader) -> Any:
        handle = dl.with_(Users).request(11)  # the request's own pending key
        result = execute(SCHEMA, parse("{ posts(first: 3) { author { name } } }"),
                         **{CONTEXT: DataloaderExecutionContext})
        return result, handle.load(), current_dataloader() is dl

    Log.calls = []
    result, user, same = Dataloader.with_dataloading(view)
    assert same and user["name"] == "user 11"
    assert result.data == {"posts": [{"author": {"name": f"user {i}"}} for i in range(3)]}
    assert Log.calls == [("users", [0, 1, 2, 11])]  # one batch with the request's key


REQUEST_ID: "ContextVar[Any]" = ContextVar("request_id", default=None)


def test_resolvers_see_the_context_of_the_code_that_runs_the_query(scheduler: Any) -> None:
    """Helpers that take over a split loop run in the loop owner's context."""
    seen: List[Any] = []
    schema = make_schema()
    post = schema.get_type("Post")
    post.fields["author"].resolve = lambda p, info: (  # type: ignore[union-attr]
        seen.append(("author", REQUEST_ID.get())), load(Users, p["author_id"]))[1]
    post.fields["title"].resolve = lambda p, info: (seen.append(("title", REQUEST_ID.get())), p["title"])[1]  # type: ignore[union-attr]

    def view(dl: Any) -> Any:
        REQUEST_ID.set("request 7")  # as a web framework does before the view runs
        return execute(schema, parse("{ posts(first: 6) { author { name } title } }"),
                       **{CONTEXT: DataloaderExecutionContext})

    result = scheduler.with_dataloading(view)
    assert result.errors is None
    assert len(seen) == 12  # items after the first park ran in helpers
    assert {value for _, value in seen} == {"request 7"}


def test_what_a_parked_resolver_sets_in_its_context_is_not_its_siblings_context(any_scheduler: Any) -> None:
    """A resolver that parks inside ``with span:`` (a ContextVar set around its load) must
    not leak that value into the sibling fields and items that helpers take over: they
    ran in a copy of the owner's context as it was when the owner parked (now: as
    it was when the loop started)."""
    seen: List[Any] = []
    schema = make_schema()
    post = schema.get_type("Post")

    def author(p: Any, info: Any) -> Any:
        seen.append(("author", p["id"], REQUEST_ID.get()))
        token = REQUEST_ID.set(f"inside author {p['id']}")
        try:
            return load(Users, p["author_id"])
        finally:
            REQUEST_ID.reset(token)

    post.fields["author"].resolve = author  # type: ignore[union-attr]
    post.fields["title"].resolve = lambda p, info: (seen.append(("title", p["id"], REQUEST_ID.get())), p["title"])[1]  # type: ignore[union-attr]

    def view(dl: Any) -> Any:
        REQUEST_ID.set("request 7")
        return execute(schema, parse("{ posts(first: 4) { author { name } title } }"),
                       **{CONTEXT: DataloaderExecutionContext})

    result = any_scheduler.with_dataloading(view)
    assert result.errors is None
    assert len(seen) == 8
    assert {value for _, _, value in seen} == {"request 7"}, seen


def test_resolvers_may_load_several_times_in_sequence_and_in_loops() -> None:
    schema = GraphQLSchema(GraphQLObjectType("Query", {
        "chain": GraphQLField(GraphQLList(GraphQLString), resolve=lambda _, info: [
            load(Users, load(Users, i)["id"] + 1)["name"] for i in range(3)
        ]),
        "other": GraphQLField(GraphQLString, resolve=lambda _, info: load(Users, 9)["name"]),
    }))
    Log.calls = []
    result = graphql_sync(schema, "{ chain other }")
    assert result.data == {"chain": ["user 1", "user 2", "user 3"], "other": "user 9"}
    assert Log.calls[0] == ("users", [0, 9])  # the first loads of both fields batch


def test_dataloader_setting_comes_from_the_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("FIBERLOADER_DATALOADER", "null")
    Log.calls = []
    result = graphql_sync(SCHEMA, "{ posts(first: 3) { author { name } } }")
    assert not result.errors
    assert len(Log.calls) == 3  # one key per fetch: NullDataloader was used


def test_no_greenlet_outlives_an_execution(no_leaked_greenlets: Any, setting: str) -> None:
    context_class = type("Ctx", (DataloaderExecutionContext,), {"dataloader_setting": setting})
    before = {id(g) for g in live_greenlets()}
    for name, query in QUERIES.items():
        want = reference(query)
        got = graphql_sync(SCHEMA, query, **{CONTEXT: context_class})
        assert normal(got) == normal(want), name  # the right data, and only the errors graphql-core gives
        if not want.errors:
            assert got.errors is None, (name, got.errors)
    leaked = [g for g in live_greenlets() if id(g) not in before]
    assert not leaked, f"greenlets left alive: {leaked}"
    result = graphql_sync(SCHEMA, QUERIES["nested lists"], **{CONTEXT: context_class})
    assert result.errors is None
    assert result.data["posts"][0] == {  # type: ignore[index]
        "title": "post 0",
        "author": {"name": "user 0"},
        "comments": [
            {"body": "c0.0", "author": {"name": "user 0"}},
            {"body": "c0.1", "author": {"name": "user 1"}},
            {"body": "c0.2", "author": {"name": "user 2"}},
        ],
    }


def test_mutations_returning_handles_complete_each_field_before_the_next(setting: str) -> None:
    """renameH returns a request handle; its subtree loads through handles too.

    Root mutation fields run serially: field a (and every handle under it)
    completes before field b renames user 3, so a's comment by user 3 still
    shows the old name.
    """
    query = """mutation {
      a: renameH(id: 2, name: "two") { name posts { id commentsH { authorH { id name } } } }
      b: renameH(id: 3, name: "three") { id name }
    }"""
    saved = dict(USERS)
    try:
        want = reference(query)
    finally:
        USERS.clear()
        USERS.update(saved)
    RENAMED.clear()
    context_class = type("Ctx", (DataloaderExecutionContext,), {"dataloader_setting": setting})
    try:
        result = graphql_sync(SCHEMA, query, **{CONTEXT: context_class})
    finally:
        USERS.clear()
        USERS.update(saved)
    assert result.errors is None
    assert normal(result) == normal(want)
    assert RENAMED == [("user 2", "two"), ("user 3", "three")]
    a, b = result.data["a"], result.data["b"]  # type: ignore[index]
    assert a["name"] == "two" and b == {"id": 3, "name": "three"}
    assert [post["id"] for post in a["posts"]] == [2, 9, 16]
    assert a["posts"][0]["commentsH"] == [
        {"authorH": {"id": 2, "name": "two"}},
        {"authorH": {"id": 3, "name": "user 3"}},  # renamed only by the next field
        {"authorH": {"id": 4, "name": "user 4"}},
    ]


def test_an_async_resolver_is_a_clear_field_error_not_a_silent_coroutine() -> None:
    """graphql-core's execute() detects awaitables; fiberloader's context says what to do."""
    schema = make_schema()

    async def title(post: Any, info: Any) -> str:
        return str(post["title"])

    schema.get_type("Post").fields["title"].resolve = title  # type: ignore[union-attr]
    result = execute(schema, parse("{ post(id: 1) { id title } }"), **{CONTEXT: DataloaderExecutionContext})
    assert result.data == {"post": None}  # title is non-null: the post is nulled
    (error,) = result.errors  # type: ignore[misc]
    assert error.path == ["post", "title"]
    assert "Post.title returned an awaitable" in error.message
    assert "graphql-core's own async execution" in error.message


@pytest.mark.parametrize("setting", ["sync", "async", "null"])
def test_a_handle_whose_value_is_another_handle_completes_with_the_inner_value(setting: str) -> None:
    class Inner(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return [f"inner {key}" for key in keys]

    class Outer(Source):
        def fetch(self, keys: List[Any]) -> List[Any]:
            return [self.dataloader.with_(Inner).request(key) for key in keys]  # type: ignore[union-attr]

    schema = build_schema("type Query { word(id: Int!): String words: [String] }")

    def resolve(_: Any, info: Any, **args: Any) -> Any:
        outer = current_dataloader().with_(Outer)  # type: ignore[union-attr]
        if info.field_name == "word":
            return outer.request(args["id"])
        return [outer.request(1), outer.request(2)]

    context = type("Context", (DataloaderExecutionContext,), {"dataloader_setting": setting})
    option = "executor_class" if GRAPHQL_CORE_3_3 else "execution_context_class"
    result = graphql_sync(schema, "{ a: word(id: 1) b: word(id: 3) words }", field_resolver=resolve,
                          **{option: context})
    assert result.errors is None
    assert result.data == {"a": "inner 1", "b": "inner 3", "words": ["inner 1", "inner 2"]}


# -- AsyncDataloader: loops split only when a resolver blocks ---------------------------------


def blocking_list_schema(seconds: float, meter: List[int]) -> GraphQLSchema:
    """``{ items { value } }``: five items whose ``value`` resolver sleeps cooperatively."""
    import gevent

    def value(item: int, info: Any) -> int:
        meter[0] += 1
        meter[1] = max(meter)
        gevent.sleep(seconds)
        meter[0] -= 1
        return item * 10

    item_type = GraphQLObjectType("Item", {"value": GraphQLField(GraphQLInt, resolve=value)})
    return GraphQLSchema(GraphQLObjectType("Query", {
        "items": GraphQLField(GraphQLList(item_type), resolve=lambda *_: list(range(5))),
    }))


def test_under_async_resolvers_blocked_in_io_overlap_across_list_items() -> None:
    """A resolver that blocks in cooperative I/O lets helpers take the other items."""
    import fiberloader

    meter = [0, 0]  # resolvers sleeping now, most at once
    schema = blocking_list_schema(0.02, meter)
    result = fiberloader.AsyncDataloader.with_dataloading(
        lambda dl: execute(schema, parse("{ items { value } }"), **{CONTEXT: DataloaderExecutionContext}))
    assert result.errors is None and result.data == {"items": [{"value": i * 10} for i in range(5)]}
    assert meter[1] == 5  # all five slept at once


def test_under_async_a_resolver_that_blocked_before_its_list_still_shares_the_items() -> None:
    """The worker blocked once already (in ``outer``), so it runs detached from the hub
    when it reaches the list: the list's items must still overlap when they block."""
    import gevent

    import fiberloader

    meter = [0, 0]
    items_schema = blocking_list_schema(0.02, meter)
    item_list = items_schema.query_type.fields["items"]

    def outer(*_: Any) -> Dict[str, Any]:
        gevent.sleep(0.001)  # blocks: the guard hands control back, the worker runs on detached
        return {}

    holder = GraphQLObjectType("Holder", {"items": item_list})
    schema = GraphQLSchema(GraphQLObjectType("Query", {"outer": GraphQLField(holder, resolve=outer)}))
    result = fiberloader.AsyncDataloader.with_dataloading(
        lambda dl: execute(schema, parse("{ outer { items { value } } }"), **{CONTEXT: DataloaderExecutionContext}))
    assert result.errors is None
    assert result.data == {"outer": {"items": [{"value": i * 10} for i in range(5)]}}
    assert meter[1] == 5  # all five slept at once


def test_under_async_an_execution_that_never_blocks_runs_as_one_job() -> None:
    """Issue 14: every loop of two or more items queued a helper job up front, which ran
    later for nothing (W1 with handles: ~7,000 empty jobs, 1.46x -> 1.20x the floor)."""
    import fiberloader

    from ._hooks import Recorder

    recorder = Recorder()
    dl = fiberloader.AsyncDataloader(extensions=[recorder])
    schema = make_schema()
    box: List[Any] = []
    query = "{ posts(first: 6) { id title } }"
    dl.append_job(lambda: box.append(execute(schema, parse(query), **{CONTEXT: DataloaderExecutionContext})))
    dl.run()
    assert box[0].errors is None and len(box[0].data["posts"]) == 6
    assert [event[0] for event in recorder.events].count("job_started") == 1
    assert dl.stats.greenlets == 1
