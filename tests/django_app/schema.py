"""The same GraphQL API twice: Graphene-Django and Strawberry, resolvers loading through sources."""

from __future__ import annotations

from typing import Any, List, Optional

import graphene
import strawberry
from graphene_django import DjangoObjectType
from graphene_django.registry import Registry

from fiberloader import current_dataloader
from fiberloader.django import AssociationSource, RecordSource
from fiberloader.graphql import DataloaderExecutionContext

from .models import Author, Comment, Post, Profile, Tag

QUERY = "{ posts { title author { name } comments { body author { name } } tags } sameDataloader }"


def dl() -> Any:
    return current_dataloader()


class AuthorType(DjangoObjectType):
    class Meta:
        model = Author
        fields = ("id", "name")


class CommentType(DjangoObjectType):
    class Meta:
        model = Comment
        fields = ("id", "body")

    author = graphene.Field(AuthorType)

    def resolve_author(comment: Comment, info: Any) -> Any:
        return dl().with_(RecordSource, Author).load(comment.author_id)


class PostType(DjangoObjectType):
    class Meta:
        model = Post
        fields = ("id", "title")

    author = graphene.Field(AuthorType)
    comments = graphene.List(CommentType)
    tags = graphene.List(graphene.String)

    def resolve_author(post: Post, info: Any) -> Any:
        return dl().with_(AssociationSource, Post, "author").load(post)  # merges into RecordSource

    def resolve_comments(post: Post, info: Any) -> Any:
        return dl().with_(AssociationSource, Post, "comments").load(post)

    def resolve_tags(post: Post, info: Any) -> Any:
        return [tag.name for tag in dl().with_(AssociationSource, Post, "tags").load(post)]


class Query(graphene.ObjectType):
    posts = graphene.List(PostType)
    same_dataloader = graphene.Boolean()

    def resolve_posts(root: Any, info: Any) -> Any:
        return Post.objects.order_by("id")

    def resolve_same_dataloader(root: Any, info: Any) -> bool:
        return dl() is info.context.dataloader  # info.context is the request


graphene_schema = graphene.Schema(query=Query)


@strawberry.type
class SAuthor:
    name: str


@strawberry.type
class SComment:
    body: str

    @strawberry.field
    def author(self, info: strawberry.Info) -> SAuthor:
        # the fast path: return a request handle; the executor completes it after the batch
        return dl().with_(RecordSource, Author).request(self.author_id)  # type: ignore[attr-defined,no-any-return]


@strawberry.type
class SPost:
    title: str

    @strawberry.field
    def author(self) -> SAuthor:
        return dl().with_(RecordSource, Author).load(self.author_id)  # type: ignore[attr-defined,no-any-return]

    @strawberry.field
    def comments(self) -> List[SComment]:
        return dl().with_(AssociationSource, Post, "comments").load(self)  # type: ignore[no-any-return]

    @strawberry.field
    def tags(self) -> List[str]:
        return [tag.name for tag in dl().with_(AssociationSource, Post, "tags").load(self)]


@strawberry.type
class SQuery:
    @strawberry.field
    def posts(self) -> List[SPost]:
        return list(Post.objects.order_by("id"))  # type: ignore[arg-type]  # model instances as SPost

    @strawberry.field
    def same_dataloader(self, info: strawberry.Info) -> Optional[bool]:
        return dl() is info.context.request.dataloader  # type: ignore[no-any-return]


strawberry_schema = strawberry.Schema(query=SQuery, execution_context_class=DataloaderExecutionContext)


# -- Graphene-Django with no resolvers of its own: every relation is a lazy load --------

plain_registry = Registry()
PLAIN_QUERY = """{
  posts {
    title
    author { name profile { bio } }
    editor { name }
    comments { body author { name } }
    tags { name posts { title } }
  }
}"""


class PlainAuthor(DjangoObjectType):
    class Meta:
        model = Author
        fields = ("id", "name", "profile")
        registry = plain_registry


class PlainProfile(DjangoObjectType):
    class Meta:
        model = Profile
        fields = ("id", "bio")
        registry = plain_registry


class PlainComment(DjangoObjectType):
    class Meta:
        model = Comment
        fields = ("id", "body", "author")
        registry = plain_registry


class PlainTag(DjangoObjectType):
    class Meta:
        model = Tag
        fields = ("id", "name", "posts")
        registry = plain_registry


class PlainPost(DjangoObjectType):
    class Meta:
        model = Post
        fields = ("id", "title", "author", "editor", "comments", "tags")
        registry = plain_registry


class PlainQuery(graphene.ObjectType):
    posts = graphene.List(graphene.NonNull(PlainPost))

    def resolve_posts(root: Any, info: Any) -> Any:
        return Post.objects.order_by("id")


plain_schema = graphene.Schema(query=PlainQuery)
