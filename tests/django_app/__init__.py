"""A small Django project for tests/test_django.py: a blog of authors, posts, comments and tags.

``setup()`` configures Django once per process (in-memory SQLite by
default), creates the tables and seeds them.  The subprocess tests call it
with a file database, after gevent's monkey-patching.  A second database,
``"other"`` (always in memory), holds the same rows under the same primary
keys with upper-case names: what comes from which database shows.
"""

from __future__ import annotations

from typing import Any, Optional

AUTHORS = ["ada", "grace", "barbara"]
TAGS = ["python", "django", "greenlet"]
POSTS = 6


def setup(database: str = ":memory:", scheduler: Optional[str] = None) -> None:
    """Configure Django (once), create the tables and seed them."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    options: Any = {}
    if scheduler is not None:
        options["FIBERLOADER_DATALOADER"] = scheduler
    settings.configure(
        DEBUG=False,
        SECRET_KEY="fiberloader-tests",
        ALLOWED_HOSTS=["testserver"],
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": database},
            "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        },
        INSTALLED_APPS=["tests.django_app"],
        MIDDLEWARE=[
            "tests.django_app.views.RequestContextMiddleware",
            "fiberloader.django.DataloaderMiddleware",
        ],
        ROOT_URLCONF="tests.django_app.urls",
        STATIC_URL="/static/",  # graphene-django imports a lazy staticfiles storage that gc scans touch
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        USE_TZ=True,
        **options,
    )
    django.setup()
    _create_and_seed()


def _create_and_seed() -> None:
    from django.apps import apps
    from django.db import connections

    for alias in ("default", "other"):
        with connections[alias].schema_editor() as editor:
            for model in apps.get_app_config("django_app").get_models():
                editor.create_model(model)
        _seed(alias, str.upper if alias == "other" else str)


def _seed(alias: str, name: Any) -> None:
    from .models import Author, Comment, Post, Profile, Tag

    authors = Author.objects.using(alias).bulk_create([Author(pk=i + 1, name=name(n)) for i, n in enumerate(AUTHORS)])
    Profile.objects.using(alias).create(author=authors[0], bio=name("first programmer"))
    tags = Tag.objects.using(alias).bulk_create([Tag(pk=i + 1, name=name(n)) for i, n in enumerate(TAGS)])
    for i in range(POSTS):
        post = Post.objects.using(alias).create(
            pk=i + 1,
            title=name(f"post {i + 1}"),
            author=authors[i % 3],
            editor=authors[(i + 1) % 3] if i % 2 else None,
        )
        post.tags.set(tags[: i % 3 + 1])
        Comment.objects.using(alias).bulk_create(
            [Comment(post=post, author=authors[(i + k) % 3], body=name(f"comment {k} on {i + 1}")) for k in (1, 2)]
        )
