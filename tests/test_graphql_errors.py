"""fiberloader.graphql: fiberloader's errors and awaitables inside an execution.

Errors: every error fiberloader raises in a resolver (a ``FetchError``, an
unhashable key, a load outside a run) is a located error of its field, like
any other exception, and the rest of the query resolves.  graphql-core
3.2's ``located_error()`` reads ``.source``, ``.positions``, ``.nodes`` and
``.message`` of any exception: our ``Source`` under ``.source`` crashed the
whole execution (issue 10).  Each case runs under every scheduler, through
fiberloader's ``graphql_sync`` and through graphql-core's own (where the
loads run in the job of ``with_dataloading``).

Awaitables: a synchronous execution cannot await, so an awaitable anywhere
(a resolver's result, a list item, a handle's value, what ``is_type_of`` or
``resolve_type`` returns) is closed and becomes a located error of its
field that says what to do; none is left in the data, no coroutine warns
that it was never awaited.  ``check_sync=True`` raises as graphql-core does.

Graphene, Strawberry, Ariadne and the SQLAlchemy sources:
``tests/test_graphql_frameworks.py`` (this file also runs on graphql-core
3.3, where those are not installed).
"""

from __future__ import annotations

import gc
import inspect
import warnings
from typing import Any, Callable, Dict, Iterator, List, Tuple, Type

import pytest
from graphql import build_schema, execute, execute_sync, parse
from graphql import graphql_sync as core_graphql_sync

import fiberloader
from fiberloader import (
    Dataloader,
    FetchError,
    FiberloaderError,
    FiberloaderTypeError,
    KeyTypeError,
    NotRunningError,
    Source,
    current_dataloader,
    dataloader_class,
)
from fiberloader.graphql import GRAPHQL_CORE_3_3, DataloaderExecutionContext, graphql_sync

CONTEXT = "executor_class" if GRAPHQL_CORE_3_3 else "execution_context_class"
SETTINGS = ["sync", "async", "null"]
# What graphql-core's located_error() reads from any exception it is given.
GRAPHQL_ERROR_ATTRIBUTES = ("source", "positions", "nodes", "path", "locations", "message")


def context_for(setting: str) -> Type[Any]:
    return type("Ctx", (DataloaderExecutionContext,), {"dataloader_setting": setting})


# -- fiberloader's errors in a resolver ------------------------------------------------


class Names(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        return [f"name {key}" for key in keys]


class OneShort(Source):
    def fetch(self, keys: List[Any]) -> List[Any]:
        return [f"name {key}" for key in keys][:-1]


class Generated(Source):
    def fetch(self, keys: List[Any]) -> Any:
        return (f"name {key}" for key in keys)


def running() -> Any:
    dataloader = current_dataloader()
    assert dataloader is not None, "the resolver runs in no dataloader's job"
    return dataloader


def source_of_a_finished_run() -> Any:
    """A source kept from an earlier request: its dataloader is not running."""
    return Dataloader.with_dataloading(lambda dl: dl.with_(Names))


# name -> (the resolver of a(id), the error class, a piece of its message)
ERROR_CASES: Dict[str, Tuple[Callable[..., Any], Type[Exception], str]] = {
    "a fetch that returns one result too few": (
        lambda _, info, id: running().with_(OneShort).load(id),
        FetchError,
        "OneShort().fetch() must return one result per key, in key order, but it returned 0 results for 1 keys",
    ),
    "a fetch that returns a generator": (
        lambda _, info, id: running().with_(Generated).load(id),
        FetchError,
        "Generated().fetch() must return a list with one result per key, but it returned generator",
    ),
    "an unhashable key": (
        lambda _, info, id: running().with_(Names).load([id]),
        KeyTypeError,
        "Names().load() needs hashable keys, but got [1] (list is unhashable)",
    ),
    "a load outside a run": (
        lambda _, info, id: source_of_a_finished_run().load(id),
        NotRunningError,
        "The load of Names() key 1 (not cached) needs a running dataloader",
    ),
    "a load on a source made directly": (
        lambda _, info, id: Names().load(id),
        NotRunningError,
        "Names.load(1) was called on an instance made directly",
    ),
}
QUERY = "{ x: a(id: 1) b }"


def schema_with(resolve_a: Callable[..., Any]) -> Any:
    schema = build_schema("type Query { a(id: Int): String b: String }")
    schema.query_type.fields["a"].resolve = resolve_a  # type: ignore[union-attr]
    schema.query_type.fields["b"].resolve = lambda *_: "b"  # type: ignore[union-attr]
    return schema


def assert_only_x_failed(data: Any, errors: Any, error_class: Type[Exception], message: str) -> None:
    """``{ x: a(id: 1) b }``: x is null with its located error, b resolved."""
    assert data == {"x": None, "b": "b"}
    (error,) = errors
    assert error.path == ["x"]
    assert error.formatted["locations"] == [{"line": 1, "column": 3}]
    assert isinstance(error.original_error, error_class)
    assert message in error.message
    assert error.message == str(error.original_error)
    assert_no_graphql_error_attributes(error.original_error)


def assert_no_graphql_error_attributes(error: BaseException) -> None:
    present = [name for name in GRAPHQL_ERROR_ATTRIBUTES if hasattr(error, name)]
    assert not present, f"{type(error).__name__} has {present}: graphql-core's located_error() reads them"


@pytest.mark.parametrize("case", ERROR_CASES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_a_fiberloader_error_in_a_resolver_is_a_located_error_of_its_field(case: str, setting: str) -> None:
    resolve, error_class, message = ERROR_CASES[case]
    result = graphql_sync(schema_with(resolve), QUERY, **{CONTEXT: context_for(setting)})
    assert_only_x_failed(result.data, result.errors, error_class, message)


@pytest.mark.parametrize("case", ERROR_CASES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_a_fiberloader_error_is_located_when_the_setting_picks_the_scheduler(
    case: str, setting: str, monkeypatch: Any
) -> None:
    monkeypatch.setenv("FIBERLOADER_DATALOADER", setting)
    resolve, error_class, message = ERROR_CASES[case]
    result = graphql_sync(schema_with(resolve), QUERY)
    assert_only_x_failed(result.data, result.errors, error_class, message)


@pytest.mark.parametrize("case", ERROR_CASES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_a_fiberloader_error_is_located_by_graphql_cores_own_executor_too(case: str, setting: str) -> None:
    """Users raise these in resolvers of any executor: here the query runs as one job."""
    resolve, error_class, message = ERROR_CASES[case]
    schema = schema_with(resolve)
    result = dataloader_class(setting).with_dataloading(lambda dl: core_graphql_sync(schema, QUERY))
    assert_only_x_failed(result.data, result.errors, error_class, message)


def test_a_load_under_graphql_cores_executor_with_no_dataloader_running_is_a_located_error() -> None:
    resolve, error_class, message = ERROR_CASES["a load outside a run"]
    result = core_graphql_sync(schema_with(resolve), QUERY)
    assert_only_x_failed(result.data, result.errors, error_class, message)
    result = core_graphql_sync(schema_with(ERROR_CASES["a load on a source made directly"][0]), QUERY)
    assert_only_x_failed(result.data, result.errors, NotRunningError, "was called on an instance made directly")


def error_classes(*modules: Any) -> List[type]:
    """The public error classes of ``modules`` and every fiberloader subclass of FiberloaderError."""
    found = {
        value for module in modules for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__.startswith("fiberloader")
    }
    todo = [FiberloaderError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("fiberloader"):
            found.add(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.__qualname__)


def constructed(cls: type) -> BaseException:
    """An instance with every argument its constructor takes (so every attribute is set)."""
    source = Names()
    values = {"data_source": source, "key": 1, "keys": [1, 2], "result": ["x"], "count": 2,
              "timeout": 0.5, "waits": [(source, [1])]}
    try:
        parameters = inspect.signature(cls).parameters.values()
    except ValueError:  # the constructor of a built-in exception: (message)
        parameters = []  # type: ignore[assignment]
    arguments = [
        values.get(parameter.name, "A message.") for parameter in parameters
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]
    return cls(*(arguments or ["A message."]))  # type: ignore[no-any-return]


def test_no_fiberloader_error_has_an_attribute_that_graphql_core_reads() -> None:
    classes = error_classes(fiberloader, fiberloader.graphql)
    names = {cls.__name__ for cls in classes}
    assert {"FetchError", "KeyTypeError", "NotRunningError", "DeadlockError", "SourceKeyError"} <= names
    for cls in classes:
        assert_no_graphql_error_attributes(constructed(cls))


# -- awaitables in a synchronous execution ---------------------------------------------

SDL = """
interface Pet { name: String }
type Dog implements Pet { name: String }
type Cat implements Pet { name: String }
type Query {
  dog: Dog
  pet: Pet
  pets: [Pet]
  names: [String]
  title: String
  strictTitle: String!
  b: String
}
"""
ROOT = {"dog": {"name": "rex"}, "pet": {"name": "rex"}, "b": "b"}
ADVICE = "or run this schema with graphql-core's own async execution, without DataloaderExecutionContext."


async def coroutine(value: Any = "value") -> Any:
    return value


async def answer_true(*_: Any) -> bool:
    return True


async def answer_dog(*_: Any) -> str:
    return "Dog"


async def async_names(*_: Any) -> Any:
    yield "never read"


def make_schema() -> Any:
    return build_schema(SDL)


def run_entry_point(entry_point: str, schema: Any, query: str, setting: str = "sync") -> Any:
    if entry_point == "fiberloader graphql_sync":
        return graphql_sync(schema, query, root_value=ROOT, **{CONTEXT: context_for(setting)})
    if entry_point == "graphql-core graphql_sync":
        return core_graphql_sync(schema, query, ROOT, **{CONTEXT: context_for(setting)})
    assert entry_point == "graphql-core execute"
    return execute(schema, parse(query), ROOT, **{CONTEXT: context_for(setting)})


ENTRY_POINTS = ["fiberloader graphql_sync", "graphql-core graphql_sync", "graphql-core execute"]


def awaitables_in(value: Any) -> Iterator[Any]:
    if inspect.isawaitable(value) or hasattr(value, "__aiter__"):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from awaitables_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from awaitables_in(item)


def run(execute_query: Callable[[], Any]) -> Tuple[Any, List[Any]]:
    """Execute; fail if an awaitable is left in the data or a coroutine was never awaited."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = execute_query()
        data, errors = result.data, list(result.errors or [])
        left = [repr(value) for value in awaitables_in(data)]
        for value in awaitables_in(data):
            if inspect.iscoroutine(value):
                value.close()  # so that the failure below is the only report
        del result
        gc.collect()
    assert not left, f"awaitables left in the data: {left}"
    unawaited = [str(warning.message) for warning in caught if "never awaited" in str(warning.message)]
    assert not unawaited
    return data, errors


def assert_located(error: Any, path: List[Any], message: str) -> None:
    assert error.path == path
    assert error.locations, "the error has no location"
    assert isinstance(error.original_error, FiberloaderTypeError)
    assert message in error.message
    assert error.message.endswith(ADVICE)


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_an_async_resolver_is_a_located_error_that_says_what_to_do(entry_point: str) -> None:
    schema = make_schema()
    schema.query_type.fields["title"].resolve = lambda *_: coroutine("a title")
    data, errors = run(lambda: run_entry_point(entry_point, schema, "{ title b }"))
    assert data == {"title": None, "b": "b"}
    (error,) = errors
    assert_located(error, ["title"], "The resolver of Query.title returned an awaitable (<coroutine object coroutine")


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_an_async_is_type_of_is_a_located_error_of_the_field(entry_point: str) -> None:
    schema = make_schema()
    schema.get_type("Dog").is_type_of = answer_true
    data, errors = run(lambda: run_entry_point(entry_point, schema, "{ dog { name } b }"))
    assert data == {"dog": None, "b": "b"}
    (error,) = errors
    assert_located(error, ["dog"], "Dog.is_type_of returned an awaitable (<coroutine object answer_true")


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_an_async_resolve_type_is_a_located_error_of_the_field(entry_point: str) -> None:
    schema = make_schema()
    schema.get_type("Pet").resolve_type = answer_dog
    data, errors = run(lambda: run_entry_point(entry_point, schema, "{ pet { name } b }"))
    assert data == {"pet": None, "b": "b"}
    (error,) = errors
    assert_located(error, ["pet"], "Pet.resolve_type returned an awaitable (<coroutine object answer_dog")


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_an_async_is_type_of_asked_by_the_default_type_resolver_is_a_located_error(entry_point: str) -> None:
    schema = make_schema()
    schema.get_type("Dog").is_type_of = answer_true
    schema.get_type("Cat").is_type_of = answer_true
    data, errors = run(lambda: run_entry_point(entry_point, schema, "{ pet { name } b }"))
    assert data == {"pet": None, "b": "b"}
    (error,) = errors
    assert_located(error, ["pet"], "Dog.is_type_of returned an awaitable")


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_coroutines_in_a_list_are_located_errors_of_their_items(entry_point: str) -> None:
    schema = make_schema()
    schema.query_type.fields["names"].resolve = lambda *_: [coroutine("a"), "b", coroutine("c")]
    data, errors = run(lambda: run_entry_point(entry_point, schema, "{ names b }"))
    assert data == {"names": [None, "b", None], "b": "b"}
    first, third = errors
    assert_located(first, ["names", 0], "The resolver of Query.names returned a list whose item 0 is an awaitable")
    assert_located(third, ["names", 2], "The resolver of Query.names returned a list whose item 2 is an awaitable")


class Animal:
    def __init__(self, kind: str, name: str) -> None:
        self.type, self.name = kind, name


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_a_coroutine_in_a_list_of_an_abstract_type_never_reaches_resolve_type(entry_point: str) -> None:
    schema = make_schema()
    schema.get_type("Pet").resolve_type = lambda value, info, pet: value.type
    schema.query_type.fields["pets"].resolve = lambda *_: [Animal("Dog", "rex"), coroutine(Animal("Cat", "tom"))]
    data, errors = run(lambda: run_entry_point(entry_point, schema, "{ pets { name } b }"))
    assert data == {"pets": [{"name": "rex"}, None], "b": "b"}
    (error,) = errors  # not "'coroutine' object has no attribute 'type'"
    assert_located(error, ["pets", 1], "The resolver of Query.pets returned a list whose item 1 is an awaitable")


@pytest.mark.parametrize("setting", SETTINGS)
def test_coroutines_in_a_list_that_other_workers_took_over_are_located_errors(setting: str) -> None:
    """The first item parks on a load; the items after it run in a split loop (not under null)."""
    schema = make_schema()
    schema.get_type("Pet").resolve_type = lambda value, info, pet: value.type
    schema.get_type("Dog").fields["name"].resolve = lambda dog, info: running().with_(Names).load(dog.name)
    schema.query_type.fields["pets"].resolve = lambda *_: [
        Animal("Dog", "rex"), coroutine(), Animal("Dog", "fido"), coroutine(), Animal("Dog", "max"),
    ]
    data, errors = run(lambda: run_entry_point("fiberloader graphql_sync", schema, "{ pets { name } b }", setting))
    assert data == {"pets": [{"name": "name rex"}, None, {"name": "name fido"}, None, {"name": "name max"}], "b": "b"}
    assert [error.path for error in errors] == [["pets", 1], ["pets", 3]]
    assert_located(errors[1], ["pets", 3], "The resolver of Query.pets returned a list whose item 3 is an awaitable")


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_an_async_generator_for_a_list_is_a_located_error_of_the_field(entry_point: str) -> None:
    schema = make_schema()
    schema.query_type.fields["names"].resolve = async_names
    data, errors = run(lambda: run_entry_point(entry_point, schema, "{ names b }"))
    assert data == {"names": None, "b": "b"}
    (error,) = errors
    assert_located(error, ["names"], "The resolver of Query.names returned an async iterable for a list")


class Coroutines(Source):
    """A fetch whose results are coroutines (an ``async def`` helper called without await)."""

    def fetch(self, keys: List[Any]) -> List[Any]:
        return [coroutine(key) for key in keys]


@pytest.mark.parametrize("setting", SETTINGS)
def test_a_coroutine_that_a_fetch_returned_is_a_located_error_for_load_and_for_handles(setting: str) -> None:
    schema = make_schema()
    fields = schema.query_type.fields
    fields["title"].resolve = lambda *_: running().with_(Coroutines).request("title")
    fields["b"].resolve = lambda *_: running().with_(Coroutines).load("b")
    data, errors = run(lambda: run_entry_point("fiberloader graphql_sync", schema, "{ title b }", setting))
    assert data == {"title": None, "b": None}
    handle, loaded = sorted(errors, key=lambda error: error.path)[::-1]
    assert_located(handle, ["title"], "The resolver of Query.title returned a request handle whose value (from fetch)")
    assert_located(loaded, ["b"], "The resolver of Query.b returned an awaitable (<coroutine object coroutine")


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_an_async_non_null_field_nulls_its_parent_with_a_located_error(entry_point: str) -> None:
    schema = make_schema()
    schema.query_type.fields["strictTitle"].resolve = lambda *_: coroutine()
    data, errors = run(lambda: run_entry_point(entry_point, schema, "{ strictTitle b }"))
    assert data is None
    (error,) = errors
    assert_located(error, ["strictTitle"], "The resolver of Query.strictTitle returned an awaitable")


SYNC_FAILURE = "GraphQL execution failed to complete synchronously."
CHECKED_ENTRY_POINTS: Dict[str, Callable[[Any, str], Any]] = {
    "graphql-core graphql_sync": lambda schema, query: core_graphql_sync(
        schema, query, ROOT, check_sync=True, **{CONTEXT: DataloaderExecutionContext}
    ),
    "graphql-core execute_sync": lambda schema, query: execute_sync(
        schema, parse(query), ROOT, check_sync=True, **{CONTEXT: DataloaderExecutionContext}
    ),
    "fiberloader graphql_sync": lambda schema, query: graphql_sync(schema, query, root_value=ROOT, check_sync=True),
}


@pytest.mark.parametrize("entry_point", CHECKED_ENTRY_POINTS)
@pytest.mark.parametrize(
    "query, make_async",
    [
        ("{ title b }", lambda schema: setattr(schema.query_type.fields["title"], "resolve", lambda *_: coroutine())),
        ("{ strictTitle b }", lambda schema: setattr(schema.query_type.fields["strictTitle"], "resolve", lambda *_: coroutine())),
        ("{ dog { name } }", lambda schema: setattr(schema.get_type("Dog"), "is_type_of", answer_true)),
        ("{ pet { name } }", lambda schema: setattr(schema.get_type("Pet"), "resolve_type", answer_dog)),
        ("{ names }", lambda schema: setattr(schema.query_type.fields["names"], "resolve", lambda *_: [coroutine()])),
    ],
    ids=["resolver", "non-null resolver", "is_type_of", "resolve_type", "list item"],
)
def test_check_sync_raises_as_graphql_core_does_when_an_awaitable_is_met(
    entry_point: str, query: str, make_async: Callable[[Any], None]
) -> None:
    execute_checked = CHECKED_ENTRY_POINTS[entry_point]
    schema = make_schema()
    assert execute_checked(schema, "{ dog { name } b }").data == {"dog": {"name": "rex"}, "b": "b"}
    make_async(schema)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError) as raised:
            execute_checked(schema, query)
        message, cause = str(raised.value), raised.value.__cause__
        del raised
        gc.collect()
    assert message == SYNC_FAILURE
    assert isinstance(getattr(cause, "original_error", None), FiberloaderTypeError)  # says which field, and why
    assert not [warning for warning in caught if "never awaited" in str(warning.message)]


def test_an_execution_nested_in_a_resolver_sees_only_its_own_check_sync() -> None:
    """An inner execute() (no check_sync) inside an outer graphql_sync(check_sync=True)."""
    inner_schema = make_schema()
    inner_schema.query_type.fields["title"].resolve = lambda *_: coroutine()
    inner_messages: List[str] = []
    schema = make_schema()
    schema.query_type.fields["title"].resolve = lambda *_: inner_messages.append(
        execute(inner_schema, parse("{ title }"), **{CONTEXT: DataloaderExecutionContext}).errors[0].message
    )
    schema.query_type.fields["names"].resolve = lambda *_: ["a", coroutine()]
    with pytest.raises(RuntimeError, match=SYNC_FAILURE) as raised:
        graphql_sync(schema, "{ title names }", root_value=ROOT, check_sync=True)
    assert [message.split(" (")[0] for message in inner_messages] == [
        "The resolver of Query.title returned an awaitable"  # the inner execution did not raise
    ]
    assert raised.value.__cause__.path == ["names", 1]  # type: ignore[union-attr]
