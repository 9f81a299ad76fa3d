from __future__ import annotations

from django.urls import path
from graphene_django.views import GraphQLView as GrapheneView
from strawberry.django.views import GraphQLView as StrawberryView

from fiberloader.graphql import DataloaderExecutionContext

from . import schema, views

urlpatterns = [
    path("posts/", views.posts),
    path("naive/", views.naive),
    path("stream/", views.stream),
    path("scheduler/", views.scheduler),
    path("tagged/", views.tagged),
    path("atomic/", views.atomic),
    path(
        "graphene/",
        GrapheneView.as_view(schema=schema.graphene_schema, execution_context_class=DataloaderExecutionContext),
    ),
    path("strawberry/", StrawberryView.as_view(schema=schema.strawberry_schema)),
    path(
        "graphene-plain/",
        GrapheneView.as_view(schema=schema.plain_schema, execution_context_class=DataloaderExecutionContext),
    ),
]
