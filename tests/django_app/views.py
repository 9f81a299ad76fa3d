"""Views of the test project.  Each loads through the request's dataloader."""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import gevent
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import translation

from fiberloader import Source, current_dataloader
from fiberloader.django import AssociationSource, RecordSource

from .models import Author, Post, Tag

#: The request, set by the middleware that runs before fiberloader's.
CURRENT_REQUEST: "ContextVar[Optional[HttpRequest]]" = ContextVar("current_request", default=None)


class RequestContextMiddleware:
    """Outer middleware: request state in contextvars (as Django keeps the active language)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = CURRENT_REQUEST.set(request)
        try:
            with translation.override(request.GET.get("lang", "en")):
                return self.get_response(request)
        finally:
            CURRENT_REQUEST.reset(token)


def post_row(post: Post) -> Dict[str, Any]:
    """One post as plain code: every load waits, and batches with the other posts' loads."""
    dl: Any = current_dataloader()
    author = dl.with_(RecordSource, Author).load(post.author_id)
    comments = dl.with_(AssociationSource, Post, "comments").load(post)
    tags = dl.with_(AssociationSource, Post, "tags").load(post)
    editor = dl.with_(AssociationSource, Post, "editor").load(post)
    return {
        "title": post.title,
        "author": author.name,
        "editor": editor.name if editor is not None else None,
        "comments": [
            {"body": c.body, "author": dl.with_(RecordSource, Author).load(c.author_id).name} for c in comments
        ],
        "tags": [tag.name for tag in tags],
    }


def posts(request: HttpRequest) -> HttpResponse:
    dl: Any = request.dataloader  # type: ignore[attr-defined]
    return JsonResponse({"posts": dl.map(post_row, Post.objects.order_by("id"))})


STREAM_LOG: List[Tuple[Any, ...]] = []


def stream(request: HttpRequest) -> StreamingHttpResponse:
    dl: Any = request.dataloader  # type: ignore[attr-defined]
    rows = list(Post.objects.order_by("id"))

    def author_name(post: Post) -> str:
        return dl.with_(RecordSource, Author).load(post.author_id).name  # type: ignore[no-any-return]

    def chunks() -> Iterator[str]:
        try:
            for start in range(0, len(rows), 3):
                STREAM_LOG.append(("step", current_dataloader() is dl))
                yield json.dumps(dl.map(author_name, rows[start : start + 3])) + "\n"
        finally:  # at the end of the iteration, or when the response is closed early
            STREAM_LOG.append(("finally", current_dataloader() is dl, dl.with_(RecordSource, Tag).load(1).name))

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def scheduler(request: HttpRequest) -> HttpResponse:
    dl: Any = request.dataloader  # type: ignore[attr-defined]
    return JsonResponse({"setting": dl.setting_name, "current": current_dataloader() is dl})


class Tagged(Source):
    """Values that name the request they were fetched for; the fetch yields to other requests."""

    fetches: List[Tuple[int, List[Any]]] = []
    in_flight = 0
    most_in_flight = 0

    def fetch(self, keys: List[Any]) -> List[str]:
        Tagged.fetches.append((id(self.dataloader), list(keys)))
        Tagged.in_flight += 1
        Tagged.most_in_flight = max(Tagged.most_in_flight, Tagged.in_flight)
        try:
            gevent.sleep(0.01)  # cooperative: other requests run meanwhile
        finally:
            Tagged.in_flight -= 1
        request = CURRENT_REQUEST.get()
        assert request is not None
        return [f"{request.GET['tag']}:{key}:{translation.get_language()}" for key in keys]


def tagged(request: HttpRequest) -> HttpResponse:
    dl: Any = request.dataloader  # type: ignore[attr-defined]
    return JsonResponse({"values": dl.map(dl.with_(Tagged).load, [1, 2, 3, 1]), "dataloader": id(dl)})


def atomic(request: HttpRequest) -> HttpResponse:
    """Loads in worker greenlets that end while the request's connection is in a transaction."""
    dl: Any = request.dataloader  # type: ignore[attr-defined]
    with transaction.atomic():
        created = Tag.objects.create(name="atomic")

        def item(pk: int) -> Any:
            name = dl.with_(RecordSource, Author).load(pk).name  # waits: the rest runs in a worker
            return name, Tag.objects.filter(pk=created.pk).exists()  # on the request's connection?

        # run_isolated: its workers end (and clean up) while the transaction is open
        names, in_transaction = zip(*dl.run_isolated(lambda: dl.map(item, [1, 2, 3])))
        intact = connection.in_atomic_block and connection.connection is not None and not connection.needs_rollback
        visible = Tag.objects.filter(pk=created.pk).exists()
    return JsonResponse({"names": names, "intact": intact, "visible": visible, "in_transaction": in_transaction})


def naive_rows() -> List[Dict[str, Any]]:
    """The posts as code written without fiberloader: a plain loop of lazy loads (an N+1)."""
    return [
        {
            "title": post.title,
            "author": post.author.name,
            "editor": post.editor.name if post.editor else None,
            "comments": [{"body": c.body, "author": c.author.name} for c in post.comments.all()],
            "tags": [tag.name for tag in post.tags.all()],
            "bio": post.author.profile.bio if hasattr(post.author, "profile") else None,
        }
        for post in Post.objects.order_by("id")
    ]


def naive(request: HttpRequest) -> HttpResponse:
    """An unchanged view: what FIBERLOADER_BATCH_LAZY_LOADS batches without a line of fiberloader."""
    return JsonResponse({"posts": naive_rows()})
