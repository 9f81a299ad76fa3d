"""fiberloader.sqlalchemy.batch_lazy_loads: SQLAlchemy's own lazy loads, batched, on a real SQLite database.

Every test counts the SQL statements the engine runs (``before_cursor_execute``)
and runs under each batching scheduler (``scheduler``); each compares its
values with the same code run the plain way (SQLAlchemy's lazy loading, no
dataloader), whose statement count is the naive one.
"""

from __future__ import annotations

import gc
import re
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Type

import pytest
from sqlalchemy import Column, ForeignKey, Table, create_engine, delete, event, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    lazyload,
    mapped_column,
    registry,
    relationship,
    selectinload,
    with_loader_criteria,
)
from sqlalchemy.pool import StaticPool

from fiberloader import Dataloader, FiberloaderTypeError, NullDataloader, Source, current_dataloader
from fiberloader.sqlalchemy import AssociationSource, RecordSource, batch_lazy_loads

# -- the models ---------------------------------------------------------------


class Base(DeclarativeBase):
    pass


post_tags = Table(
    "post_tags",
    Base.metadata,
    Column("post_id", ForeignKey("posts.id"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id"), primary_key=True),
)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    profile: Mapped[Optional["Profile"]] = relationship(back_populates="user")  # one-to-one
    posts: Mapped[List["Post"]] = relationship(back_populates="author", order_by="Post.id")

    def __repr__(self) -> str:
        return f"<User {self.id}>"


class Profile(Base):
    __tablename__ = "profiles"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    bio: Mapped[str]
    user: Mapped[User] = relationship(back_populates="profile")


class Post(Base):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    author_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id"))
    author: Mapped[Optional[User]] = relationship(back_populates="posts")
    comments: Mapped[List["Comment"]] = relationship(back_populates="post", order_by="Comment.position")
    tags: Mapped[List["Tag"]] = relationship(secondary=post_tags, order_by="Tag.name")
    strict_comments: Mapped[List["Comment"]] = relationship(lazy="raise", viewonly=True)
    # a join condition of its own
    later_comments: Mapped[List["Comment"]] = relationship(
        primaryjoin="and_(Comment.post_id == Post.id, Comment.position > 1)", order_by="Comment.id", viewonly=True)
    no_sql_comments: Mapped[List["Comment"]] = relationship(lazy="raise_on_sql", viewonly=True)

    def __repr__(self) -> str:
        return f"<Post {self.id}>"


class Comment(Base):
    __tablename__ = "comments"
    id: Mapped[int] = mapped_column(primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    parent_id: Mapped[Optional[int]] = mapped_column(ForeignKey("comments.id"))
    position: Mapped[int]
    body: Mapped[str]
    post: Mapped[Post] = relationship(back_populates="comments")
    author: Mapped[User] = relationship()
    parent: Mapped[Optional["Comment"]] = relationship(back_populates="replies", remote_side=[id])
    replies: Mapped[List["Comment"]] = relationship(back_populates="parent", order_by="Comment.id")

    def __repr__(self) -> str:
        return f"<Comment {self.id}>"


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


# Post id -> (author id, [(comment id, position, author id, parent id)], [tag names])
POSTS: Dict[int, Tuple[Optional[int], List[Tuple[int, int, int, Optional[int]]], List[str]]] = {
    1: (1, [(10, 2, 2, None), (11, 1, 3, None), (12, 3, 4, 10)], ["sql", "python"]),
    2: (2, [(20, 1, 1, None)], ["c"]),
    3: (1, [], []),
    4: (None, [(40, 5, 2, None), (41, 4, 2, 40), (42, 6, 5, 40)], ["python"]),
    5: (3, [(50, 1, 4, None)], ["c", "sql"]),
}
USERS = {1: "ada", 2: "grace", 3: "linus", 4: "barbara", 5: "edsger"}


class Database:
    """An in-memory SQLite database with the models, and the statements it ran."""

    def __init__(self) -> None:
        self.engine: Engine = create_engine("sqlite://", poolclass=StaticPool)
        Base.metadata.create_all(self.engine)
        self.statements: List[Tuple[str, Any]] = []
        event.listen(self.engine, "before_cursor_execute", self._seen)
        self._seed()
        self.statements.clear()

    def _seen(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        self.statements.append((statement, parameters))

    def _seed(self) -> None:
        tag_ids = {"python": 1, "sql": 2, "c": 3}
        with self.engine.begin() as connection:
            connection.execute(insert(User), [{"id": id, "name": name} for id, name in USERS.items()])
            connection.execute(insert(Profile), [{"id": 1, "user_id": 1, "bio": "engines"},
                                                 {"id": 2, "user_id": 3, "bio": "kernels"}])
            connection.execute(insert(Tag), [{"id": id, "name": name} for name, id in tag_ids.items()])
            for post_id, (author_id, comments, tags) in POSTS.items():
                connection.execute(insert(Post).values(id=post_id, title=f"post {post_id}", author_id=author_id))
                for comment_id, position, author, parent in comments:
                    connection.execute(insert(Comment).values(id=comment_id, post_id=post_id, author_id=author,
                                                              parent_id=parent, position=position,
                                                              body=f"c{comment_id}"))
                for name in tags:
                    connection.execute(insert(post_tags).values(post_id=post_id, tag_id=tag_ids[name]))

    def count(self) -> int:
        return len(self.statements)

    def reset(self) -> None:
        self.statements.clear()

    def tables(self) -> List[str]:
        """The table each statement selected from, in order."""
        return [re.search(r"\sFROM (\w+)", statement).group(1) for statement, _ in self.statements]  # type: ignore[union-attr]


@pytest.fixture
def db() -> Iterator[Database]:
    database = Database()
    yield database
    database.engine.dispose()


@pytest.fixture
def session(db: Database) -> Iterator[Session]:
    with Session(db.engine) as session:
        yield session


@pytest.fixture
def lazy() -> Iterator[None]:
    """Lazy loads of the models batch (for this test only)."""
    batch_lazy_loads(Base)
    yield
    batch_lazy_loads(Base, enabled=False)


def all_posts(session: Session, *options: Any) -> List[Post]:
    return list(session.scalars(select(Post).options(*options).order_by(Post.id)))


def describe(post: Post) -> Dict[str, Any]:
    """One post the naive way: every relationship an attribute access."""
    author = post.author
    return {
        "id": post.id,
        "author": author and author.name,
        "bio": author and author.profile and author.profile.bio,
        "comments": [(c.id, c.author.name, [r.id for r in c.replies], c.parent and c.parent.id)
                     for c in post.comments],
        "tags": [tag.name for tag in post.tags],
    }


def plain(db: Database, code: Callable[[Session], Any]) -> Tuple[Any, int]:
    """What ``code`` gives with SQLAlchemy's own lazy loading (a fresh session, no dataloader), and its count."""
    with Session(db.engine) as session:
        db.reset()
        value = code(session)
        count = db.count()
    db.reset()
    return value, count


def batched(scheduler: Type[Dataloader], db: Database, code: Callable[[Session], Any],
            **options: Any) -> Tuple[Any, int]:
    """What ``code`` gives as a job of ``scheduler`` (a fresh session), and its count."""
    with Session(db.engine) as session:
        db.reset()
        value = scheduler.with_dataloading(lambda dl: code(session), **options)
        count = db.count()
    db.reset()
    return value, count


def in_one_loop(session: Session) -> List[Dict[str, Any]]:
    return [describe(post) for post in all_posts(session)]


def current() -> Dataloader:
    dataloader: Dataloader = current_dataloader()
    return dataloader


# -- one statement per relationship, whatever the shape -----------------------


def test_a_loop_in_one_job_is_one_statement_per_relationship(scheduler: Type[Dataloader], db: Database,
                                                             lazy: None) -> None:
    """Unchanged code, one job: the peers (instances of the same query) share each batch."""
    expected, naive = plain(db, in_one_loop)
    with Session(db.engine) as session:
        db.reset()
        views = scheduler.with_dataloading(lambda dl: in_one_loop(session))
        assert views == expected
        # posts; their authors; the authors' profiles; the comments; their replies; the comment
        # authors the session does not hold (4, 5); the tags. The parents are in the session.
        assert db.tables() == ["posts", "users", "users", "posts", "comments", "users", "posts"]
        assert tuple(db.statements[5][1]) == (4, 5)
        assert naive == 27
        db.reset()
        assert in_one_loop(session) == expected  # filled: a later access runs no lazy load
        assert db.tables() == ["posts"]
        assert not session.dirty and not any(session.is_modified(post) for post in session.identity_map.values())


def test_one_job_per_post_is_one_statement_per_relationship(scheduler: Type[Dataloader], db: Database,
                                                            lazy: None) -> None:
    views, count = batched(scheduler, db, lambda session: current().map(describe, all_posts(session)))
    assert views == plain(db, in_one_loop)[0]
    assert count == 7


@pytest.mark.parametrize("name, expected, table", [
    ("author", [1, 2, 1, None, 3], "users"),  # many-to-one (a None foreign key: no SQL)
    ("comments", [[11, 10, 12], [20], [], [41, 40, 42], [50]], "posts"),  # one-to-many, order_by
    ("tags", [["python", "sql"], ["c"], [], ["python"], ["c", "sql"]], "posts"),  # many-to-many
    ("later_comments", [[10, 12], [], [], [40, 41, 42], []], "posts"),  # a primaryjoin of its own
])
def test_each_kind_of_relationship_is_one_statement(scheduler: Type[Dataloader], db: Database, lazy: None,
                                                    name: str, expected: List[Any], table: str) -> None:
    def code(session: Session) -> List[Any]:
        return [getattr(post, name) for post in all_posts(session)]

    def shown(value: Any) -> Any:
        if isinstance(value, list):
            return [shown(item) for item in value]
        return value.name if isinstance(value, Tag) else value and value.id

    expected_plain, naive = plain(db, lambda session: shown(code(session)))
    values, count = batched(scheduler, db, lambda session: shown(code(session)))
    assert values == expected_plain == expected
    assert count == 2 and naive > 3
    with Session(db.engine) as session:
        db.reset()
        scheduler.with_dataloading(lambda dl: code(session))
        assert db.tables()[1] == table
        if name == "tags":
            assert "JOIN post_tags" in db.statements[1][0]
        if name == "comments":
            assert "JOIN comments" in db.statements[1][0] and "ORDER BY comments.position" in db.statements[1][0]


def test_the_attribute_holds_the_collection_the_batch_set(scheduler: Type[Dataloader], db: Database,
                                                          lazy: None) -> None:
    """SQLAlchemy reads the value the batch put into the instance (ATTR_WAS_SET): no copy."""
    with Session(db.engine) as session:
        posts = all_posts(session)
        first = scheduler.with_dataloading(lambda dl: [post.comments for post in posts])
        db.reset()
        assert all(post.comments is collection for post, collection in zip(posts, first))
        assert all(type(collection).__name__ == "InstrumentedList" for collection in first)
        first[2].append(Comment(id=32, post_id=3, author_id=1, position=1, body="x"))  # an ordinary collection
        assert session.new and posts[2] in session.dirty
        assert db.count() == 0


def test_one_to_one_and_self_referential(scheduler: Type[Dataloader], db: Database, lazy: None) -> None:
    def code(session: Session) -> Any:
        users = list(session.scalars(select(User).order_by(User.id)))
        comments = list(session.scalars(select(Comment).order_by(Comment.id)))
        return ([user.profile and user.profile.bio for user in users],
                [[reply.id for reply in comment.replies] for comment in comments],
                [comment.parent and comment.parent.id for comment in comments],
                [profile.user.name for profile in session.scalars(select(Profile))])

    expected, naive = plain(db, code)
    values, count = batched(scheduler, db, code)
    assert values == expected
    assert values[0] == ["engines", None, "kernels", None, None]  # uselist=False, also None
    # users, comments, profiles, replies, the profiles query; parents and profile users: the session has them
    assert count == 5 and naive == 2 + 5 + 8 + 1


def test_statements_per_session(scheduler: Type[Dataloader], db: Database, lazy: None) -> None:
    """Two sessions in one round: one statement each, never mixed."""
    with Session(db.engine) as first, Session(db.engine) as second:
        posts = all_posts(first)[:3] + all_posts(second)[3:]
        db.reset()
        comments = scheduler.with_dataloading(lambda dl: dl.map(lambda post: [c.id for c in post.comments], posts))
        assert comments == [[11, 10, 12], [20], [], [41, 40, 42], [50]]
        assert sorted(tuple(parameters) for _, parameters in db.statements) == [(1, 2, 3), (4, 5)]
        assert all(post in first for post in posts[:3]) and all(c in second for c in posts[4].comments)


def test_jobs_without_peers_batch_through_the_scheduler(scheduler: Type[Dataloader], db: Database,
                                                        lazy: None) -> None:
    """Instances from separate queries (no peers): the jobs' accesses still share one batch."""
    def code(session: Session) -> Any:
        return current().map(lambda id: [c.id for c in session.get(Post, id).comments], [1, 2, 3, 4])  # type: ignore[union-attr]

    values, count = batched(scheduler, db, code)
    assert values == [[11, 10, 12], [20], [], [41, 40, 42]]
    assert count == 4 + 1  # a session.get per job, then one statement for the comments


# -- the switch off, NullDataloader, outside a job: SQLAlchemy's own path -------


@pytest.mark.parametrize("mode", ["switch off", "NullDataloader", "outside a job", "another base"])
def test_without_a_batching_job_the_count_is_the_naive_one(db: Database, mode: str) -> None:
    class Other(DeclarativeBase):
        pass

    expected, naive = plain(db, in_one_loop)
    batch_lazy_loads(Other if mode == "another base" else Base, enabled=mode != "switch off")
    try:
        with Session(db.engine) as session:
            db.reset()
            if mode == "outside a job":
                views = in_one_loop(session)
            else:
                scheduler = NullDataloader if mode == "NullDataloader" else Dataloader
                views = scheduler.with_dataloading(lambda dl: in_one_loop(session))
            assert views == expected
            assert db.count() == naive
    finally:
        batch_lazy_loads(Base, enabled=False)
        batch_lazy_loads(Other, enabled=False)


def test_targets_a_registry_or_one_mapped_class(scheduler: Type[Dataloader], db: Database) -> None:
    def code(session: Session) -> Any:
        posts = all_posts(session)
        return [p.author and p.author.id for p in posts], [[c.author.id for c in p.comments] for p in posts]

    expected, naive = plain(db, code)
    batch_lazy_loads(Base.registry)
    batch_lazy_loads(Base.registry)  # twice: changes nothing
    try:
        assert batched(scheduler, db, code) == (expected, 4)  # posts, authors, comments, comment authors
    finally:
        batch_lazy_loads(Base.registry, enabled=False)
    assert batched(scheduler, db, code) == (expected, naive)  # off again
    batch_lazy_loads(Post)  # Post's relationships only: each comment's author as usual
    try:
        values, count = batched(scheduler, db, code)
        assert values == expected
        assert count == 1 + 1 + 1 + 2  # ... then barbara and edsger one at a time
    finally:
        batch_lazy_loads(Post, enabled=False)


@pytest.mark.parametrize("target", [object(), "Base", Post.__table__, int, registry])
def test_a_target_that_is_not_a_base_registry_or_mapped_class(target: Any) -> None:
    with pytest.raises(FiberloaderTypeError) as info:
        batch_lazy_loads(target)
    message = str(info.value)
    assert message.startswith("fiberloader.sqlalchemy.batch_lazy_loads(")
    assert "declarative base class, a sqlalchemy.orm.registry or a mapped class" in message
    assert "Base.registry" in message
    assert isinstance(info.value, TypeError)


# -- what is loaded already, or cannot be -------------------------------------


def test_eagerly_loaded_relationships_run_no_sql(scheduler: Type[Dataloader], db: Database, lazy: None) -> None:
    def code(session: Session) -> Any:
        posts = all_posts(session, selectinload(Post.comments).joinedload(Comment.author), joinedload(Post.author))
        return [(p.author and p.author.name, [(c.id, c.author.name) for c in p.comments]) for p in posts]

    expected, naive = plain(db, code)
    values, count = batched(scheduler, db, code)
    assert values == expected and count == naive == 2


def test_a_none_foreign_key_and_a_deleted_target(scheduler: Type[Dataloader], db: Database, lazy: None) -> None:
    def code(session: Session) -> Any:
        session.execute(delete(User).where(User.id == 4))  # barbara's comments keep her id
        comments = list(session.scalars(select(Comment).order_by(Comment.id)))
        posts = all_posts(session)
        return [c.author and c.author.name for c in comments], [p.author and p.author.name for p in posts]

    expected, naive = plain(db, code)
    values, count = batched(scheduler, db, code)
    assert values == expected
    assert values[0] == ["grace", "linus", None, "ada", "grace", "grace", "edsger", None]
    assert values[1] == ["ada", "grace", "ada", None, "linus"]
    assert count == 1 + 2 + 1 + 0  # delete, comments, comment authors (1, 2, 3, 4, 5), posts: authors held


def test_a_target_deleted_in_the_session(scheduler: Type[Dataloader], db: Database, lazy: None) -> None:
    def code(session: Session) -> Any:
        comments = list(session.scalars(select(Comment).order_by(Comment.id)))
        session.delete(session.get(User, 5))
        session.flush()
        return [c.author and c.author.name for c in comments]

    expected, _ = plain(db, code)
    values, _ = batched(scheduler, db, code)
    assert values == expected and values[-2] is None


@pytest.mark.parametrize("option", ["lazyload with criteria", "with_loader_criteria"])
def test_loader_options_take_sqlalchemys_own_path(scheduler: Type[Dataloader], db: Database, lazy: None,
                                                  option: str) -> None:
    """A lazy load with criteria of its own: what the option asks for, the naive way."""
    def code(session: Session) -> Any:
        if option == "with_loader_criteria":
            posts = all_posts(session, with_loader_criteria(Comment, Comment.position > 1))
        else:
            posts = all_posts(session, lazyload(Post.comments.and_(Comment.position > 1)))
        return [[c.id for c in post.comments] for post in posts]

    expected, naive = plain(db, code)
    values, count = batched(scheduler, db, code)
    assert values == expected == [[10, 12], [], [], [41, 40, 42], []]
    assert count == naive == 1 + 5


def test_raise_strategies_still_raise(scheduler: Type[Dataloader], db: Database, lazy: None) -> None:
    def code(session: Session) -> Any:
        post = all_posts(session)[0]
        errors = []
        for name in ("strict_comments", "no_sql_comments"):
            try:
                getattr(post, name)
            except InvalidRequestError as error:
                errors.append(str(error))
        return errors

    errors, count = batched(scheduler, db, code)
    assert len(errors) == 2 and "lazy='raise'" in errors[0] and "lazy='raise_on_sql'" in errors[1]
    assert count == 1


def test_expired_attributes_after_a_commit_are_loaded_again(scheduler: Type[Dataloader], db: Database,
                                                            lazy: None) -> None:
    def code(session: Session) -> Any:
        posts = all_posts(session)
        before = [[c.id for c in post.comments] for post in posts]
        session.add(Comment(id=30, post_id=3, author_id=1, position=1, body="new"))
        session.commit()  # expires everything
        counted = len(db.statements)
        after = [[c.id for c in post.comments] for post in posts]
        reload = len(db.statements) - counted
        authors = [p.author and p.author.name for p in posts]
        session.execute(delete(Comment).where(Comment.id == 30))  # as it was, for the next run
        session.commit()
        return before, after, reload, authors

    (before, after, reload, authors), _ = plain(db, code)
    assert reload == 5 + 5  # per post: its expired primary key, then its comments
    values, _ = batched(scheduler, db, code)
    assert values == (before, after, 1, authors)  # the comments again: one statement
    assert after[2] == [30]


def test_pending_changes_are_kept_as_sqlalchemy_keeps_them(scheduler: Type[Dataloader], db: Database,
                                                            lazy: None) -> None:
    """A comment attached through the backref before the collection loads: in it, once."""
    def code(session: Session) -> Any:
        posts = all_posts(session)
        session.add(Comment(id=31, post=posts[2], author_id=1, position=1, body="draft"))
        return [[c.id for c in post.comments] for post in posts], sorted(map(repr, session.dirty))

    expected, _ = plain(db, code)
    values, _ = batched(scheduler, db, code)
    assert values == expected and values[0][2] == [31]


# -- inside a fetch, run_isolated, fiber_limit ---------------------------------


class TitleSource(Source):
    """A source of the user's: titles with their authors' names, a lazy load inside fetch."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def fetch(self, ids: List[int]) -> List[str]:
        posts = {post.id: post for post in self.session.scalars(select(Post).where(Post.id.in_(ids)))}
        return [f"{posts[id].title} by {posts[id].author and posts[id].author.name}" for id in ids]


def test_a_lazy_load_inside_a_fetch(scheduler: Type[Dataloader], db: Database, lazy: None) -> None:
    def code(session: Session) -> Any:
        return current().map(current().with_(TitleSource, session).load, [5, 1, 4, 2])

    values, count = batched(scheduler, db, code)
    assert values == ["post 5 by linus", "post 1 by ada", "post 4 by None", "post 2 by grace"]
    assert count == 2  # the fetch's query, then the authors


def test_a_lazy_load_inside_run_isolated(scheduler: Type[Dataloader], db: Database, lazy: None) -> None:
    def code(session: Session) -> Any:
        posts = all_posts(session)
        return current().run_isolated(lambda: [[c.author.name for c in post.comments] for post in posts])

    expected, _ = plain(db, lambda session: [[c.author.name for c in p.comments] for p in all_posts(session)])
    values, count = batched(scheduler, db, code)
    assert values == expected and count == 3  # posts, comments, comment authors


def test_a_fiber_limit_of_two(scheduler: Type[Dataloader], db: Database, lazy: None) -> None:
    values, count = batched(scheduler, db, lambda session: current().map(describe, all_posts(session)),
                            fiber_limit=2)
    assert values == plain(db, in_one_loop)[0]
    assert count == 7


# -- what the peers keep -------------------------------------------------------


def test_nothing_is_kept_beyond_the_instances(scheduler: Type[Dataloader], db: Database, lazy: None) -> None:
    with Session(db.engine) as session:
        def job(dl: Dataloader) -> Any:
            posts = all_posts(session)
            [post.author for post in posts]
            return [weakref.ref(post) for post in posts], weakref.ref(dl.with_(AssociationSource, session, Post, "author"))

        refs, source = scheduler.with_dataloading(job)
        gc.collect()
        assert source() is None  # the dataloader and its sources are gone
        assert [ref() for ref in refs] == [None] * 5  # the session holds them weakly, and so do the peers


def test_a_lazy_load_in_a_flush_event_is_sqlalchemys_own(scheduler: Type[Dataloader], db: Database,
                                                         lazy: None) -> None:
    """Never parked mid-flush: another job's flush would find the session still flushing."""
    authors: List[Any] = []

    def before_flush(session: Session, context: Any, instances: Any) -> None:
        authors.extend(sorted((post.id, post.author and post.author.name) for post in session.dirty))

    def edit(session: Session, post: Post) -> str:
        post.title += "!"
        session.flush()
        return post.title

    with Session(db.engine) as session:
        event.listen(session, "before_flush", before_flush)
        posts = all_posts(session)[:2]
        titles = scheduler.with_dataloading(lambda dl: dl.map(lambda post: edit(session, post), posts))
        assert titles == ["post 1!", "post 2!"]
        assert authors == [(1, "ada"), (2, "grace")]


def test_the_stats_list_the_batches_not_the_peer_groups(scheduler: Type[Dataloader], db: Database,
                                                        lazy: None) -> None:
    """What dataloader.stats.sources shows (the example app's X-Fiberloader-Stats): each relationship loaded."""
    with Session(db.engine) as session:
        dl = scheduler()
        dl.append_job(lambda: in_one_loop(session))
        dl.run()
        shown = list(dl.stats.sources)
        made = [source for instances in dl._sources.values() for source in instances.values()]
    assert {type(source).__name__ for source in made} > {"AssociationSource", "RecordSource"}  # + the peer book
    assert shown and all(isinstance(source, (AssociationSource, RecordSource)) for source in shown), shown
    assert sum(dl.stats.sources[source].fetches for source in shown) == 8  # 6 relationships, users twice
