"""settings.FIBERLOADER_BATCH_LAZY_LOADS: Django's own lazy loads, batched in jobs.

The code under test is written without fiberloader (plain attribute access
and related managers).  Each test runs it three ways and compares: plainly
(outside any dataloader), and as jobs with the switch on and off.  The
values must be identical; the statements (``CaptureQueriesContext`` on both
databases of ``tests/django_app``) minimal with the switch on, the naive
count without.
"""

from __future__ import annotations

import json
import pickle
from contextlib import ExitStack
from typing import Any, Callable, Dict, List, Tuple, Type

import pytest

from tests.django_app import setup

setup()

from django.db import connections, transaction  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

import fiberloader  # noqa: E402
from fiberloader import Dataloader, NullDataloader, Source  # noqa: E402
from fiberloader.django import BatchLazyLoads  # noqa: E402
from tests.django_app import views  # noqa: E402
from tests.django_app.models import Author, Comment, Post, Profile, Tag  # noqa: E402
from tests.django_app.schema import PLAIN_QUERY, plain_schema  # noqa: E402

SCHEDULERS: Dict[str, Type[Dataloader]] = {"sync": Dataloader, "async": fiberloader.AsyncDataloader}


@pytest.fixture(params=sorted(SCHEDULERS))
def scheduler(request: Any) -> Type[Dataloader]:
    return SCHEDULERS[request.param]


class Counted:
    """Statements run on every database inside the block, with their SQL."""

    def __enter__(self) -> "Counted":
        self._stack = ExitStack()
        self.captures = [self._stack.enter_context(CaptureQueriesContext(connections[a])) for a in ("default", "other")]
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)

    @property
    def count(self) -> int:
        return sum(len(capture) for capture in self.captures)

    @property
    def sql(self) -> List[str]:
        return [query["sql"] for capture in self.captures for query in capture.captured_queries]


def plainly(fn: Callable[[], Any]) -> Tuple[Any, int]:
    with Counted() as counted:
        value = fn()
    return value, counted.count


def in_jobs(cls: Type[Dataloader], fn: Callable[[Any], Any], batching: bool = True) -> Tuple[Any, Counted]:
    """``fn(dataloader)`` as the job of a new ``cls`` with the setting on (or off)."""
    with override_settings(FIBERLOADER_BATCH_LAZY_LOADS=batching), Counted() as counted:
        value = cls.with_dataloading(fn)
    return value, counted


def posts() -> List[Post]:
    return list(Post.objects.order_by("id"))


# -- each kind of relation, from one job per instance ------------------------------------

RELATIONS = [
    (Post, "author", lambda p: p.author.name),  # forward foreign key
    (Post, "editor", lambda p: p.editor and p.editor.name),  # nullable: None needs no query
    (Post, "comments", lambda p: [c.body for c in p.comments.all()]),  # reverse foreign key
    (Post, "tags", lambda p: [t.name for t in p.tags.all()]),  # many-to-many
    (Tag, "posts", lambda t: [p.title for p in t.posts.all()]),  # reverse many-to-many
    (Profile, "author", lambda p: p.author.name),  # forward one-to-one
    (Author, "profile", lambda a: a.profile.bio if hasattr(a, "profile") else "none"),  # reverse one-to-one
]


@pytest.mark.parametrize("model, name, read", RELATIONS, ids=[f"{m.__name__}.{n}" for m, n, _ in RELATIONS])
def test_each_kind_of_lazy_relation_is_one_query_per_round_with_identical_values(
    scheduler: Type[Dataloader], model: Any, name: str, read: Callable[[Any], Any]
) -> None:
    expected, naive = plainly(lambda: [read(i) for i in model.objects.order_by("id")])

    def job(dl: Dataloader) -> Any:
        instances = list(model.objects.order_by("id"))
        values = dl.map(read, instances)
        with Counted() as again:  # filled as Django fills them: reading again costs nothing
            assert [read(i) for i in instances] == values
        assert again.count == 0
        return values

    values, counted = in_jobs(scheduler, job)
    assert values == expected
    assert naive >= 2 and counted.count == 2, counted.sql  # the instances, then the relation once


def test_with_the_setting_off_or_under_null_dataloader_the_naive_count_runs(scheduler: Type[Dataloader]) -> None:
    expected, naive = plainly(views.naive_rows)
    for cls, batching in ((scheduler, False), (NullDataloader, True)):
        values, counted = in_jobs(cls, lambda dl: dl.map(lambda _: views.naive_rows(), [0])[0], batching)
        assert values == expected and counted.count == naive, (cls, batching)


def test_outside_a_job_django_loads_as_always() -> None:
    expected, naive = plainly(views.naive_rows)
    with override_settings(FIBERLOADER_BATCH_LAZY_LOADS=True):
        dl = Dataloader()
        assert any(isinstance(e, BatchLazyLoads) for e in dl.extensions)
        value, count = plainly(views.naive_rows)  # a dataloader exists, but this is no job of it
    assert value == expected and count == naive


def test_the_extension_batches_without_the_setting(scheduler: Type[Dataloader]) -> None:
    expected, _ = plainly(views.naive_rows)
    with Counted() as counted:
        value = scheduler.with_dataloading(lambda dl: views.naive_rows(), extensions=[BatchLazyLoads()])
    assert value == expected and counted.count == 5


# -- a loop in one job: the peers of what a query returned -------------------------------


def test_a_plain_loop_in_one_job_costs_one_query_per_relation(scheduler: Type[Dataloader]) -> None:
    expected, naive = plainly(views.naive_rows)
    value, counted = in_jobs(scheduler, lambda dl: views.naive_rows())
    assert value == expected
    # posts, their authors (the editors and the comments' authors are among them: no query),
    # comments, tags, and the authors' profiles
    assert naive == 40 and counted.count == 5, counted.sql


def test_instances_from_different_queries_batch_together(scheduler: Type[Dataloader]) -> None:
    """What a per-queryset scheme (django-auto-prefetch) cannot do: one query per instance here."""
    expected, _ = plainly(lambda: [Post.objects.get(pk=pk).author.name for pk in range(1, 7)])

    def job(dl: Dataloader) -> Any:
        return dl.map(lambda pk: Post.objects.get(pk=pk).author.name, range(1, 7))

    value, counted = in_jobs(scheduler, job)
    assert value == expected
    assert counted.count == 6 + 1, counted.sql  # six gets, one query for the six authors


# -- what runs Django's own path --------------------------------------------------------


def test_filtered_ordered_sliced_and_counted_querysets_query_as_always(scheduler: Type[Dataloader]) -> None:
    def read(post: Post) -> Any:
        return (
            [c.body for c in post.comments.filter(body__contains="1")],
            [c.body for c in post.comments.order_by("-id")],
            [t.name for t in post.tags.all()[:1]],
            post.comments.count(),
        )

    expected, naive = plainly(lambda: [read(p) for p in posts()])
    value, counted = in_jobs(scheduler, lambda dl: dl.map(read, posts()))
    assert value == expected and counted.count == naive


def test_prefetched_and_selected_relations_cost_nothing(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        rows = list(Post.objects.select_related("author").prefetch_related("comments").order_by("id"))
        with Counted() as counted:
            values = dl.map(lambda p: (p.author.name, [c.body for c in p.comments.all()]), rows)
        assert counted.count == 0
        return values

    expected, _ = plainly(lambda: [(p.author.name, [c.body for c in p.comments.all()]) for p in posts()])
    assert in_jobs(scheduler, job)[0] == expected


def test_a_queryset_evaluated_after_its_job_queries_as_always(scheduler: Type[Dataloader]) -> None:
    kept = in_jobs(scheduler, lambda dl: [p.comments.all() for p in posts()])[0]  # marked, not evaluated
    with Counted() as counted:
        bodies = [[c.body for c in queryset] for queryset in kept]
    assert counted.count == 6
    assert bodies == [[c.body for c in p.comments.all()] for p in posts()]


# -- edges ----------------------------------------------------------------------------------


def test_instances_of_two_databases_are_loaded_from_their_own(scheduler: Type[Dataloader]) -> None:
    def read(post: Post) -> Any:
        return post.author.name, [c.body for c in post.comments.all()], [t.name for t in post.tags.all()]

    def both() -> List[Any]:
        return [read(p) for p in posts()] + [read(p) for p in Post.objects.using("other").order_by("id")]

    expected, _ = plainly(both)
    assert expected[0][0] == "ada" and expected[6][0] == "ADA"  # same keys, different rows

    def job(dl: Dataloader) -> Any:
        return dl.map(read, posts() + list(Post.objects.using("other").order_by("id")))

    value, counted = in_jobs(scheduler, job)
    assert value == expected
    assert [len(c) for c in counted.captures] == [4, 4], counted.sql  # posts, authors, comments, tags: each its own


def test_two_objects_of_one_row_are_both_filled(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        first, second = Post.objects.get(pk=1), Post.objects.get(pk=1)
        names = dl.map(lambda p: p.author.name, [first, second])
        assert Post.author.is_cached(first) and Post.author.is_cached(second)
        return names

    assert in_jobs(scheduler, job)[0] == ["ada", "ada"]


def test_a_missing_target_raises_what_django_raises(scheduler: Type[Dataloader]) -> None:
    def attempt() -> Any:
        try:
            return comment.post.title
        except Post.DoesNotExist as error:
            return type(error).__name__, str(error)

    with transaction.atomic():
        comment = Comment.objects.get(pk=1)
        # The row goes; this instance still points at it (as after a concurrent delete).
        Comment.objects.filter(post_id=comment.post_id).delete()
        Post.objects.filter(pk=comment.post_id).delete()
        expected, _ = plainly(attempt)
        assert expected == ("DoesNotExist", "Post matching query does not exist.")
        assert not Comment.post.is_cached(comment)  # a failed load caches nothing
        value, _ = in_jobs(scheduler, lambda dl: dl.map(lambda _: attempt(), [0])[0])
        assert not Comment.post.is_cached(comment)
        transaction.set_rollback(True)
    assert value == expected


def test_writes_through_the_manager_are_seen_by_the_next_lazy_load(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        post = Post.objects.get(pk=1)
        seen = [[c.body for c in post.comments.all()]]
        post.comments.create(author_id=1, body="new")
        seen.append([c.body for c in post.comments.all()])
        post.comments.get_or_create(author_id=2, body="newer")  # Django keeps a prefetched list here
        seen.append([c.body for c in post.comments.all()])
        post.tags.create(name="fresh")  # many-to-many: create adds
        seen.append([t.name for t in post.tags.all()])
        return seen

    def plain_run() -> Any:
        with transaction.atomic():
            value = job(None)  # type: ignore[arg-type]
            transaction.set_rollback(True)
        return value

    expected, _ = plainly(plain_run)
    with transaction.atomic():
        value, _ = in_jobs(scheduler, lambda dl: dl.map(lambda _: job(dl), [0])[0])
        transaction.set_rollback(True)
    assert value == expected
    assert expected[2] == ["comment 1 on 1", "comment 2 on 1", "new", "newer"] and "fresh" in expected[3]


class Titles(Source):
    """A source whose fetch reads a lazy relation of each key: the lazy load waits in the fetch."""

    def fetch(self, keys: List[int]) -> List[str]:
        return [f"{post.title} by {post.author.name}" for post in Post.objects.filter(pk__in=keys).order_by("id")]


def test_a_lazy_load_inside_a_fetch_and_inside_run_isolated(scheduler: Type[Dataloader]) -> None:
    expected = [f"{p.title} by {p.author.name}" for p in posts()]

    def job(dl: Dataloader) -> Any:
        in_fetch = dl.with_(Titles).load_all(range(1, 7))
        isolated = dl.run_isolated(lambda: dl.map(lambda p: f"{p.title} by {p.author.name}", posts()))
        return in_fetch, isolated

    value, counted = in_jobs(scheduler, job)
    assert value == (expected, expected)
    # the fetch's posts and their authors; run_isolated's posts (new objects): their authors
    # are the ones the first batch loaded, which RecordSource(Author) holds
    assert counted.count == 3, counted.sql


def test_under_a_fiber_limit_the_lazy_loads_still_batch(scheduler: Type[Dataloader]) -> None:
    expected, _ = plainly(lambda: [p.author.name for p in posts()])
    with override_settings(FIBERLOADER_BATCH_LAZY_LOADS=True), Counted() as counted:
        value = scheduler.with_dataloading(lambda dl: dl.map(lambda p: p.author.name, posts()), fiber_limit=2)
    assert value == expected and counted.count == 2, counted.sql


def test_an_instance_with_peers_still_pickles_and_copies(scheduler: Type[Dataloader]) -> None:
    def job(dl: Dataloader) -> Any:
        rows = posts()
        rows[0].author  # noqa: B018 - a lazy load: the peers were noted
        return pickle.loads(pickle.dumps(rows[1])), rows[1]

    restored, original = in_jobs(scheduler, job)[0]
    assert restored == original and restored.title == original.title


# -- unchanged apps ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sync", "async"])
def test_an_unchanged_view_behind_the_middleware_runs_the_minimal_queries(name: str) -> None:
    expected, naive = plainly(views.naive_rows)
    for batching, count in ((True, 5), (False, naive)):
        with override_settings(FIBERLOADER_DATALOADER=name, FIBERLOADER_BATCH_LAZY_LOADS=batching), Counted() as c:
            response = Client().get("/naive/")
        assert response.status_code == 200
        assert response.json() == {"posts": expected}
        assert c.count == count, (batching, c.sql)


def plain_graphene() -> Tuple[Any, int]:
    def execute() -> Any:
        result = plain_schema.execute(PLAIN_QUERY)
        assert result.errors is None, result.errors
        return result.data

    return plainly(execute)


@pytest.mark.parametrize("name", ["sync", "async"])
def test_graphene_django_types_without_resolvers_run_the_minimal_queries(name: str) -> None:
    expected, naive = plain_graphene()
    # posts; authors; profiles; comments; tags; the tags' posts (their titles only)
    for batching, count in ((True, 6), (False, naive)):
        with override_settings(FIBERLOADER_DATALOADER=name, FIBERLOADER_BATCH_LAZY_LOADS=batching), Counted() as c:
            response = Client().post("/graphene-plain/", json.dumps({"query": PLAIN_QUERY}),
                                     content_type="application/json")
        body = response.json()
        assert "errors" not in body, body
        assert body["data"] == json.loads(json.dumps(expected))
        assert c.count == count, (batching, c.sql)
    assert naive > 40


def test_what_select_related_built_are_peers_too(scheduler: Type[Dataloader]) -> None:
    def read(rows: List[Post]) -> Any:
        return [p.author.profile.bio if hasattr(p.author, "profile") else None for p in rows]

    expected, naive = plainly(lambda: read(list(Post.objects.select_related("author").order_by("id"))))
    value, counted = in_jobs(scheduler, lambda dl: read(list(Post.objects.select_related("author").order_by("id"))))
    assert value == expected
    assert naive == 7 and counted.count == 2, counted.sql  # the posts with their authors, the profiles


def test_a_batch_does_not_narrow_the_peers_it_filled(scheduler: Type[Dataloader]) -> None:
    """Comments loaded for six posts stay peers of one another after each post's list is read."""

    def job(dl: Dataloader) -> Any:
        rows = posts()
        comments = [c for p in rows for c in p.comments.all()]  # one query: twelve comment peers
        return [c.author.name for c in comments]  # one query for their authors

    expected, _ = plainly(lambda: [c.author.name for p in posts() for c in p.comments.all()])
    value, counted = in_jobs(scheduler, job)
    assert value == expected and counted.count == 3, counted.sql
