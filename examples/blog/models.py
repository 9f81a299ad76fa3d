"""The blog's tables: users write posts, posts have comments and tags."""

from __future__ import annotations

from typing import List

from sqlalchemy import Column, ForeignKey, String, Table, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["Base", "User", "Post", "Comment", "Tag", "post_tags"]


class Base(DeclarativeBase):
    pass


post_tags = Table(
    "post_tags",
    Base.metadata,
    Column("post_id", ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True),
)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))

    posts: Mapped[List["Post"]] = relationship(back_populates="author", order_by="Post.id")
    comments: Mapped[List["Comment"]] = relationship(back_populates="author", order_by="Comment.id")

    def __repr__(self) -> str:
        return f"<User {self.id} {self.name!r}>"


class Post(Base):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)

    author: Mapped[User] = relationship(back_populates="posts")
    comments: Mapped[List["Comment"]] = relationship(back_populates="post", order_by="Comment.id")
    tags: Mapped[List["Tag"]] = relationship(secondary=post_tags, back_populates="posts", order_by="Tag.name")

    def __repr__(self) -> str:
        return f"<Post {self.id} {self.title!r}>"


class Comment(Base):
    __tablename__ = "comments"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)

    post: Mapped[Post] = relationship(back_populates="comments")
    author: Mapped[User] = relationship(back_populates="comments")

    def __repr__(self) -> str:
        return f"<Comment {self.id} on post {self.post_id}>"


class Tag(Base):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)

    posts: Mapped[List[Post]] = relationship(secondary=post_tags, back_populates="tags", order_by="Post.id")

    def __repr__(self) -> str:
        return f"<Tag {self.id} {self.name!r}>"
