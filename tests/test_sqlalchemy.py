"""fiberloader.sqlalchemy: RecordSource and AssociationSource on a real SQLite database.

Every test counts the SQL statements the engine runs (``before_cursor_execute``)
and runs under each batching scheduler (``scheduler``) or under every
scheduler, ``NullDataloader`` included (``any_scheduler``), where it asserts
values only.
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import MultipleResultsFound
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    Session,
    WriteOnlyMapped,
    mapped_column,
    relationship,
    scoped_session,
    selectinload,
    sessionmaker,
)
from sqlalchemy.pool import StaticPool

import fiberloader
from fiberloader import (
    ConfigurationError,
    Dataloader,
    FiberloaderError,
    KeyTypeError,
    NullDataloader,
    SourceTypeError,
)
from fiberloader.sqlalchemy import (
    AssociationSource,
    InstanceStateError,
    MultipleRecordsError,
    RecordSource,
)

# -- the models ---------------------------------------------------------------


class Base(DeclarativeBase):
    pass


post_tags = Table(
    "post_tags",
    Base.metadata,
    Column("post_id", ForeignKey("posts.id"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id"), primary_key=True),
    Column("position", Integer, nullable=False),
)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    email: Mapped[str] = mapped_column(unique=True)
    team: Mapped[str]
    profile: Mapped[Optional["Profile"]] = relationship(back_populates="user")
    memberships: WriteOnlyMapped["Membership"] = relationship()

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
    author: Mapped[Optional[User]] = relationship()
    comments: Mapped[List["Comment"]] = relationship(
        back_populates="post", order_by="Comment.position"
    )
    tags: Mapped[List["Tag"]] = relationship(secondary=post_tags, order_by="Tag.name")
    tags_by_position: Mapped[List["Tag"]] = relationship(
        secondary=post_tags, order_by=post_tags.c.position.desc(), viewonly=True
    )
    # a many-to-one with more than the foreign key in its join condition
    author_unless_grace: Mapped[Optional[User]] = relationship(
        primaryjoin="and_(User.id == Post.author_id, User.name != 'grace')", viewonly=True
    )

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
    replies: Mapped[List["Comment"]] = relationship()

    def __repr__(self) -> str:
        return f"<Comment {self.id}>"


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]

    def __repr__(self) -> str:
        return f"<Tag {self.name}>"


class Membership(Base):  # a composite primary key
    __tablename__ = "memberships"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    team: Mapped[str] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(unique=True)
    badges: Mapped[List["Badge"]] = relationship(back_populates="membership")


class Badge(Base):  # a composite foreign key
    __tablename__ = "badges"
    __table_args__ = (ForeignKeyConstraint(["user_id", "team"], ["memberships.user_id", "memberships.team"]),)
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int]
    team: Mapped[str]
    membership: Mapped[Membership] = relationship(back_populates="badges")


class Device(Base):  # a Uuid primary key
    __tablename__ = "devices"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str]


class DataclassBase(MappedAsDataclass, DeclarativeBase):
    pass


class Shelf(DataclassBase):  # dataclass __eq__: instances are unhashable
    __tablename__ = "shelves"
    id: Mapped[int] = mapped_column(primary_key=True)
    books: Mapped[List["Book"]] = relationship(default_factory=list)


class Book(DataclassBase):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int] = mapped_column(ForeignKey("shelves.id"))
    title: Mapped[str] = mapped_column(String, default="")


DEVICE = uuid.UUID("12345678-1234-5678-1234-567812345678")

# Post id -> (author id, [(comment id, position, author id, parent id)], [tag names])
POSTS: Dict[int, Tuple[Optional[int], List[Tuple[int, int, int, Optional[int]]], List[str]]] = {
    1: (1, [(10, 2, 2, None), (11, 1, 3, None), (12, 3, 4, 10)], ["sql", "python"]),
    2: (2, [(20, 1, 1, None)], ["c"]),
    3: (1, [], []),
    4: (None, [(40, 5, 2, None), (41, 4, 2, 40), (42, 6, 1, 40)], ["python"]),
}


class Database:
    """An in-memory SQLite database with the models, and the statements it ran."""

    def __init__(self) -> None:
        self.engine: Engine = create_engine("sqlite://", poolclass=StaticPool)
        Base.metadata.create_all(self.engine)
        DataclassBase.metadata.create_all(self.engine)
        self.statements: List[Tuple[str, Any]] = []
        event.listen(self.engine, "before_cursor_execute", self._seen)
        self._seed()
        self.statements.clear()

    def _seen(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        self.statements.append((statement, parameters))

    def _seed(self) -> None:
        with Session(self.engine) as session:
            session.add_all([
                User(id=1, name="ada", email="ada@example.org", team="core"),
                User(id=2, name="grace", email="grace@example.org", team="core"),
                User(id=3, name="linus", email="linus@example.org", team="kernel"),
                User(id=4, name="barbara", email="barbara@example.org", team="db"),
                Profile(id=1, user_id=1, bio="engines"),
                Profile(id=2, user_id=3, bio="kernels"),
                Tag(id=1, name="python"), Tag(id=2, name="sql"), Tag(id=3, name="c"),
                Membership(user_id=1, team="core", code="m1"),
                Membership(user_id=3, team="kernel", code="m2"),
                Membership(user_id=3, team="core", code="m3"),
                Badge(id=1, user_id=3, team="kernel"), Badge(id=2, user_id=1, team="core"),
                Badge(id=3, user_id=3, team="kernel"),
                Device(id=DEVICE, name="laptop"),
            ])
            session.flush()
            tag_ids = {"python": 1, "sql": 2, "c": 3}
            for post_id, (author_id, comments, tags) in POSTS.items():
                session.add(Post(id=post_id, title=f"post {post_id}", author_id=author_id))
                session.flush()
                for comment_id, position, comment_author, parent in comments:
                    session.add(Comment(id=comment_id, post_id=post_id, author_id=comment_author,
                                        parent_id=parent, position=position, body=f"c{comment_id}"))
                    session.flush()
                for position, name in enumerate(tags):
                    session.execute(insert(post_tags).values(post_id=post_id, tag_id=tag_ids[name],
                                                             position=position))
            shelf = Shelf(id=1)
            session.add(shelf)
            session.flush()
            session.add_all([Book(id=2, shelf_id=1, title="b"), Book(id=1, shelf_id=1, title="a")])
            session.commit()

    def count(self) -> int:
        return len(self.statements)

    def reset(self) -> None:
        self.statements.clear()


@pytest.fixture
def db() -> Iterator[Database]:
    database = Database()
    yield database
    database.engine.dispose()


@pytest.fixture
def session(db: Database) -> Iterator[Session]:
    with Session(db.engine) as session:
        yield session


def all_posts(db: Database, session: Session, *options: Any) -> List[Post]:
    posts = list(session.scalars(select(Post).options(*options).order_by(Post.id)))
    db.reset()
    return posts


def ids(records: Any) -> Any:
    if records is None:
        return None
    if isinstance(records, list):
        return [ids(record) for record in records]
    return records.id


# -- RecordSource -------------------------------------------------------------


def test_record_source_one_select_per_batch_in_key_order(scheduler: Type[Dataloader], db: Database,
                                                         session: Session) -> None:
    def job(dl: Dataloader) -> List[Any]:
        return dl.map(dl.with_(RecordSource, session, User).load, [3, 1, 99, 1, None])

    users = scheduler.with_dataloading(job)
    assert [user and user.name for user in users] == ["linus", "ada", None, "ada", None]
    assert users[1] is users[3]
    (statement, parameters), = db.statements  # one SELECT for the whole batch
    assert " IN (" in statement and "FROM users" in statement
    assert tuple(parameters) == (3, 1, 99)  # de-duplicated, in request order, no NULL
    assert session.get(User, 3) is users[0]  # the session's own instances
    assert db.count() == 1


def test_record_source_takes_what_the_session_holds_from_its_identity_map(any_scheduler: Type[Dataloader],
                                                                          db: Database, session: Session) -> None:
    """As session.get(): records the session holds need no SQL (they were selected again)."""
    held = list(session.scalars(select(User).where(User.id.in_([1, 2])).order_by(User.id)))
    db.reset()
    users = any_scheduler.with_dataloading(
        lambda dl: dl.map(dl.with_(RecordSource, session, User).load, [2, 3, 1, 99]))
    assert users[0] is held[1] and users[2] is held[0] and users[1].name == "linus" and users[3] is None
    queried = [tuple(parameters) for statement, parameters in db.statements]
    if any_scheduler is NullDataloader:
        assert queried == [(3,), (99,)]
    else:
        assert queried == [(3, 99)]  # only what the session did not hold


def test_record_source_selects_expired_and_deleted_records_again(scheduler: Type[Dataloader], db: Database,
                                                                  session: Session) -> None:
    ada, grace, linus = session.scalars(select(User).where(User.id.in_([1, 2, 3])).order_by(User.id))
    first, second = session.scalars(select(Profile).order_by(Profile.id))
    session.expire(ada)  # as after a commit: session.get() would select it again
    session.delete(second)
    session.flush()  # its row is gone
    db.reset()

    def job(dl: Dataloader) -> Any:
        return dl.with_(RecordSource, session, User).load_all([1, 2]), dl.with_(RecordSource, session, Profile).load_all([1, 2])

    users, profiles = scheduler.with_dataloading(job)
    assert users == [ada, grace] and profiles == [first, None]
    queried = sorted(tuple(parameters) for statement, parameters in db.statements)
    assert queried == [(1,), (2,)]  # ada (expired) and the deleted profile; grace and profile 1 held


def test_many_to_one_of_targets_the_session_holds_needs_no_sql(any_scheduler: Type[Dataloader], db: Database,
                                                               session: Session) -> None:
    """A back reference (users -> posts -> author): the authors are the users the root query loaded."""
    users = list(session.scalars(select(User).order_by(User.id)))
    posts = all_posts(db, session)
    authors = load_each(any_scheduler, session, Post, "author", posts)
    assert [author and author.id for author in authors] == [1, 2, 1, None]
    assert authors[0] is users[0] and authors[1] is users[1]
    assert db.count() == 0


def test_record_source_values_are_the_same_under_every_scheduler(any_scheduler: Type[Dataloader],
                                                                 session: Session) -> None:
    def job(dl: Dataloader) -> Any:
        users = dl.with_(RecordSource, session, User)
        by_email = dl.with_(RecordSource, session, User, "email")
        return (
            [user and user.name for user in dl.map(users.load, [4, 2, 7])],
            [user.id for user in by_email.load_all(["grace@example.org", "ada@example.org"])],
        )

    assert any_scheduler.with_dataloading(job) == (["barbara", "grace", None], [2, 1])


def test_record_source_by_a_unique_column(scheduler: Type[Dataloader], db: Database, session: Session) -> None:
    def job(dl: Dataloader) -> List[Any]:
        source = dl.with_(RecordSource, session, User, "email")
        assert dl.with_(RecordSource, session, User, User.email) is source
        assert dl.with_(RecordSource, session, User, column="email") is source
        assert source.column == "email"
        return dl.map(source.load, ["linus@example.org", "nobody@example.org", "ada@example.org"])

    users = scheduler.with_dataloading(job)
    assert [user and user.id for user in users] == [3, None, 1]
    assert db.count() == 1
    assert "WHERE users.email IN" in db.statements[0][0]


def test_record_source_batch_key_is_session_model_and_column_name(db: Database, session: Session) -> None:
    dl = Dataloader()
    source = dl.with_(RecordSource, session, User)
    assert source.column == "id"
    assert dl.with_(RecordSource, session, User, "id") is source
    assert dl.with_(RecordSource, session, User, User.id) is source
    assert dl.with_(RecordSource, session, User, column=None) is source
    assert RecordSource.batch_key_for(session, User) == (session, User, "id")
    assert dl.with_(RecordSource, session, Post) is not source
    with Session(db.engine) as other:
        assert dl.with_(RecordSource, other, User) is not source
    registry = scoped_session(sessionmaker(db.engine))
    try:
        scoped = dl.with_(RecordSource, registry, User)
        assert scoped.session is registry()  # a scoped_session means its current session
        assert dl.with_(RecordSource, registry(), User) is scoped
    finally:
        registry.remove()
    assert repr(source) == "RecordSource(session, User, 'id')"


def test_record_source_non_unique_column_fails_only_those_keys(scheduler: Type[Dataloader], db: Database,
                                                               session: Session) -> None:
    def load(dl: Dataloader, team: str) -> Any:
        try:
            user = dl.with_(RecordSource, session, User, "team").load(team)
        except MultipleRecordsError as error:
            return error
        return user and user.name

    results = scheduler.with_dataloading(lambda dl: dl.map(lambda team: load(dl, team), ["kernel", "core", "x"]))
    assert results[0] == "linus" and results[2] is None
    error = results[1]
    assert isinstance(error, MultipleRecordsError)
    assert isinstance(error, FiberloaderError) and isinstance(error, MultipleResultsFound)
    assert error.count == 2 and error.key == "core"
    message = str(error)
    assert "RecordSource(session, User, 'team')" in message
    assert "2 rows of User have team == 'core'" in message
    assert "unique column" in message
    assert db.count() == 1


def test_record_source_converts_string_keys_for_integer_and_uuid_columns(scheduler: Type[Dataloader],
                                                                        db: Database, session: Session) -> None:
    def job(dl: Dataloader) -> Any:
        users = dl.with_(RecordSource, session, User)
        devices = dl.with_(RecordSource, session, Device)
        return dl.map(lambda key: users.load(key), ["2", 2, "x", "3"]), devices.load_all([str(DEVICE), DEVICE])

    users, devices = scheduler.with_dataloading(job)
    assert users[0] is users[1] and users[0].id == 2
    assert users[2] is None and users[3].id == 3
    assert devices[0] is devices[1] and devices[0].name == "laptop"
    user_parameters = [tuple(p) for s, p in db.statements if "FROM users" in s]
    assert user_parameters == [(2, "x", 3)]  # "2" and 2 were one key
    assert db.count() == 2


def test_record_source_composite_primary_key_needs_a_column(scheduler: Type[Dataloader], db: Database,
                                                            session: Session) -> None:
    with pytest.raises(ConfigurationError) as info:
        scheduler.with_dataloading(lambda dl: dl.with_(RecordSource, session, Membership).load((1, "core")))
    message = str(info.value)
    assert "Membership has a composite primary key (user_id, team)" in message
    assert 'column="..."' in message
    membership = scheduler.with_dataloading(lambda dl: dl.with_(RecordSource, session, Membership, "code").load("m2"))
    assert (membership.user_id, membership.team) == (3, "kernel")


@pytest.mark.parametrize("args, error, words", [
    (("session", User), SourceTypeError, ["takes a sqlalchemy.orm.Session", "'session'"]),
    ((None, int), SourceTypeError, ["is not a mapped SQLAlchemy class", "<class 'int'>"]),
    ((None, "users"), SourceTypeError, ["is not a mapped SQLAlchemy class", "'users'"]),
    ((None, post_tags), SourceTypeError, ["is not a mapped SQLAlchemy class", "Table"]),
    ((None, User, "nickname"), ConfigurationError, ["User has no column attribute 'nickname'", "'email'"]),
    ((None, User, "profile"), ConfigurationError, ["User.profile is a relationship", "AssociationSource"]),
    ((None, User, 5), SourceTypeError, ["must be an attribute name", "got int"]),
    ((None, User, Post.id), ConfigurationError, ["that column belongs to", "Post", "not to User"]),
])
def test_record_source_bad_arguments(session: Session, args: Tuple[Any, ...], error: Type[Exception],
                                     words: List[str]) -> None:
    args = tuple(session if arg is None else arg for arg in args)
    with pytest.raises(error) as info:
        Dataloader().with_(RecordSource, *args)
    assert isinstance(info.value, FiberloaderError)
    for word in words:
        assert word in str(info.value)


# -- AssociationSource: one query per batch, per kind of relationship --------


def load_each(scheduler: Type[Dataloader], session: Session, model: type, name: str, instances: List[Any]) -> Any:
    def job(dl: Dataloader) -> Any:
        return dl.map(dl.with_(AssociationSource, session, model, name).load, instances)

    return scheduler.with_dataloading(job)


def test_many_to_one_is_one_query_through_record_source(scheduler: Type[Dataloader], db: Database,
                                                        session: Session) -> None:
    posts = all_posts(db, session)

    def job(dl: Dataloader) -> Any:
        authors = dl.map(dl.with_(AssociationSource, session, Post, "author").load, posts)
        db.statements.append(("-- mark --", ()))
        again = dl.with_(RecordSource, session, User).load_all([1, 2])  # the same cache
        return authors, again

    authors, again = scheduler.with_dataloading(job)
    assert [author and author.id for author in authors] == [1, 2, 1, None]
    assert authors[0] is authors[2] and again == [authors[0], authors[1]]
    (statement, parameters), mark = db.statements
    assert "FROM users" in statement and tuple(parameters) == (1, 2)  # no NULL, no repeat
    assert mark[0] == "-- mark --"  # RecordSource was served from the cache
    db.reset()
    assert [post.author and post.author.name for post in posts] == ["ada", "grace", "ada", None]
    assert db.count() == 0  # the attributes are filled
    assert not session.dirty and not any(session.is_modified(post) for post in posts)


def test_many_to_one_of_expired_instances_is_one_query(scheduler: Type[Dataloader], db: Database,
                                                       session: Session) -> None:
    posts = all_posts(db, session)
    session.commit()  # expires every attribute, the foreign keys too
    db.reset()

    def job(dl: Dataloader) -> Any:
        authors = dl.map(dl.with_(AssociationSource, session, Post, "author").load, posts)
        count = db.count()
        cached = dl.with_(RecordSource, session, User).load_all([1, 2])
        assert db.count() == count  # merged into RecordSource: no SQL
        return authors, cached

    authors, cached = scheduler.with_dataloading(job)
    assert [author and author.id for author in authors] == [1, 2, 1, None]
    assert cached == authors[:2]
    (statement, parameters), = db.statements  # not one refresh per post
    assert "FROM posts JOIN users" in statement and tuple(parameters) == (1, 2, 3, 4)


def test_one_to_many_is_one_query_in_relationship_order(scheduler: Type[Dataloader], db: Database,
                                                        session: Session) -> None:
    posts = all_posts(db, session)
    comments = load_each(scheduler, session, Post, "comments", posts)
    assert ids(comments) == [[11, 10, 12], [20], [], [41, 40, 42]]  # by position
    (statement, parameters), = db.statements
    assert "FROM posts JOIN comments" in statement and tuple(parameters) == (1, 2, 3, 4)
    assert "ORDER BY comments.position" in statement
    db.reset()
    for post, loaded in zip(posts, comments):
        assert post.comments is loaded  # the attribute's own collection
    assert db.count() == 0
    assert not session.dirty and not any(session.is_modified(post) for post in posts)


def test_many_to_many_is_one_query_joining_the_secondary_table(scheduler: Type[Dataloader], db: Database,
                                                               session: Session) -> None:
    posts = all_posts(db, session)
    tags = load_each(scheduler, session, Post, "tags", posts)
    assert [[tag.name for tag in post_tags] for post_tags in tags] == [["python", "sql"], ["c"], [], ["python"]]
    assert tags[0][0] is tags[3][0]  # one instance per row
    (statement, parameters), = db.statements
    assert "JOIN post_tags ON" in statement and "JOIN tags ON" in statement
    db.reset()
    assert [[tag.name for tag in post.tags] for post in posts] == [["python", "sql"], ["c"], [], ["python"]]
    assert db.count() == 0


def test_many_to_many_ordered_by_a_secondary_column(scheduler: Type[Dataloader], db: Database,
                                                    session: Session) -> None:
    posts = all_posts(db, session)
    tags = load_each(scheduler, session, Post, "tags_by_position", posts)
    assert [[tag.name for tag in post_tags] for post_tags in tags] == [["python", "sql"], ["c"], [], ["python"]]
    assert db.count() == 1
    session.expire_all()  # SQLAlchemy's own lazy load agrees
    assert [[tag.name for tag in post.tags_by_position] for post in posts] == [["python", "sql"], ["c"], [],
                                                                                ["python"]]


def test_one_to_one_is_one_query(scheduler: Type[Dataloader], db: Database, session: Session) -> None:
    users = list(session.scalars(select(User).order_by(User.id)))
    db.reset()
    profiles = load_each(scheduler, session, User, "profile", users)
    assert [profile and profile.bio for profile in profiles] == ["engines", None, "kernels", None]
    assert db.count() == 1
    db.reset()
    assert [user.profile for user in users] == profiles
    assert db.count() == 0


def test_self_referential_one_to_many(scheduler: Type[Dataloader], db: Database, session: Session) -> None:
    comments = list(session.scalars(select(Comment).order_by(Comment.id)))
    db.reset()
    replies = load_each(scheduler, session, Comment, "replies", comments)
    assert dict(zip(ids(comments), ids(replies))) == {
        10: [12], 11: [], 12: [], 20: [], 40: [41, 42], 41: [], 42: []}
    assert db.count() == 1


def test_composite_primary_and_foreign_keys(scheduler: Type[Dataloader], db: Database, session: Session) -> None:
    memberships = list(session.scalars(select(Membership).order_by(Membership.code)))
    db.reset()

    def job(dl: Dataloader) -> Any:
        badges = dl.map(dl.with_(AssociationSource, session, Membership, "badges").load, memberships)
        count = db.count()
        assert dl.with_(RecordSource, session, Badge).load(3) is badges[1][1]  # merged: no SQL
        assert db.count() == count
        owners = dl.with_(AssociationSource, session, Badge, "membership").load_all(badges[1] + badges[0])
        return badges, owners

    badges, owners = scheduler.with_dataloading(job)
    assert ids(badges) == [[2], [1, 3], []]
    assert owners == [memberships[1], memberships[1], memberships[0]]
    (first, parameters), (second, _) = db.statements
    assert "(memberships.user_id, memberships.team) IN" in first
    assert sorted(map(str, parameters)) == ["1", "3", "3", "core", "core", "kernel"]
    assert "FROM badges JOIN memberships" in second


def test_many_to_one_with_extra_join_criteria(any_scheduler: Type[Dataloader], db: Database,
                                              session: Session) -> None:
    posts = all_posts(db, session)
    authors = load_each(any_scheduler, session, Post, "author_unless_grace", posts)
    assert [author and author.name for author in authors] == ["ada", None, "ada", None]
    assert all("FROM posts JOIN users ON" in statement for statement, _ in db.statements)


def test_record_source_none_keys_need_no_query(any_scheduler: Type[Dataloader], db: Database,
                                               session: Session) -> None:
    assert any_scheduler.with_dataloading(lambda dl: dl.with_(RecordSource, session, User).load(None)) is None
    assert db.count() == 0


def test_loaded_records_are_merged_into_record_source(scheduler: Type[Dataloader], db: Database,
                                                      session: Session) -> None:
    posts = all_posts(db, session)

    def job(dl: Dataloader) -> Any:
        comments = dl.map(dl.with_(AssociationSource, session, Post, "comments").load, posts)
        tags = dl.map(dl.with_(AssociationSource, session, Post, "tags").load, posts)
        before = db.count()
        by_id = dl.with_(RecordSource, session, Comment).load_all([11, 40, 20])
        tag = dl.with_(RecordSource, session, Tag).load(3)
        assert db.count() == before  # no SQL: served from the merged records
        return comments, tags, by_id, tag

    comments, tags, by_id, tag = scheduler.with_dataloading(job)
    assert by_id == [comments[0][0], comments[3][1], comments[1][0]]
    assert tag is tags[1][0]
    assert db.count() == 2


def test_one_query_per_source_per_level(scheduler: Type[Dataloader], db: Database, session: Session) -> None:
    posts = all_posts(db, session)

    def post_view(dl: Dataloader, post: Post) -> Dict[str, Any]:
        author = dl.with_(AssociationSource, session, Post, "author").request(post)
        comments = dl.with_(AssociationSource, session, Post, "comments").load(post)
        comment_authors = dl.with_(AssociationSource, session, Comment, "author").load_all(comments)
        return {"author": author.load() and author.load().name,
                "comments": [(c.id, a.name) for c, a in zip(comments, comment_authors)]}

    views = scheduler.with_dataloading(lambda dl: dl.map(lambda post: post_view(dl, post), posts))
    assert views[0] == {"author": "ada", "comments": [(11, "linus"), (10, "grace"), (12, "barbara")]}
    assert views[3] == {"author": None, "comments": [(41, "grace"), (40, "grace"), (42, "ada")]}
    # level 1: post authors (users 1, 2) and comments; level 2: the comment authors not cached yet
    statements = [(s.split("FROM ")[1].split()[0], tuple(p)) for s, p in db.statements]
    assert sorted(statements[:2]) == [("posts", (1, 2, 3, 4)), ("users", (1, 2))]
    assert statements[2:] == [("users", (3, 4))]


def test_already_loaded_relationships_need_no_query(scheduler: Type[Dataloader], db: Database,
                                                    session: Session) -> None:
    posts = all_posts(db, session, selectinload(Post.comments))
    dl_box: List[Dataloader] = []

    def job(dl: Dataloader) -> Any:
        dl_box.append(dl)
        return dl.map(dl.with_(AssociationSource, session, Post, "comments").load, posts)

    assert ids(scheduler.with_dataloading(job)) == [[11, 10, 12], [20], [], [41, 40, 42]]
    assert db.count() == 0
    assert dl_box[0].stats.fetches == 0  # not even a batch

    session.expire_all()
    posts[1].tags  # loaded the ordinary way, by SQLAlchemy's lazy loader
    db.reset()
    tags = load_each(scheduler, session, Post, "tags", posts)
    assert [[tag.name for tag in t] for t in tags] == [["python", "sql"], ["c"], [], ["python"]]
    (statement, parameters), = db.statements
    assert "post_tags" in statement and tuple(parameters) == (1, 3, 4)  # post 2 was left out


def test_transient_and_pending_instances_get_what_sqlalchemy_gives_them(any_scheduler: Type[Dataloader],
                                                                        db: Database, session: Session) -> None:
    transient = Post(title="draft")
    pending = Post(title="pending", author_id=1)
    session.add(pending)
    db.reset()

    def job(dl: Dataloader) -> Any:
        comments = dl.with_(AssociationSource, session, Post, "comments")
        author = dl.with_(AssociationSource, session, Post, "author")
        return comments.load_all([transient, pending]), author.load(transient), author.load(pending)

    assert any_scheduler.with_dataloading(job) == ([[], []], None, None)
    assert db.count() == 0  # nothing is loaded, and nothing is flushed


def test_an_expired_relationship_is_loaded_again(scheduler: Type[Dataloader], db: Database,
                                                 session: Session) -> None:
    posts = all_posts(db, session)

    def job(dl: Dataloader) -> Any:
        source = dl.with_(AssociationSource, session, Post, "comments")
        first = ids(source.load(posts[2]))
        session.add(Comment(id=30, post_id=3, author_id=1, position=1, body="new"))
        session.commit()  # expires every attribute: the cached [] is stale
        second = ids(source.load(posts[2]))
        return first, second

    assert scheduler.with_dataloading(job) == ([], [30])


def test_merge_sets_the_attribute(any_scheduler: Type[Dataloader], db: Database, session: Session) -> None:
    posts = all_posts(db, session)
    tag = session.get(Tag, 3)
    db.reset()

    def job(dl: Dataloader) -> Any:
        source = dl.with_(AssociationSource, session, Post, "tags")
        source.merge({posts[0]: [tag]})
        return source.load(posts[0])

    loaded = any_scheduler.with_dataloading(job)
    assert loaded == [tag] and posts[0].tags is loaded
    assert db.count() == 0
    assert not session.is_modified(posts[0])


def test_request_handles(scheduler: Type[Dataloader], db: Database, session: Session) -> None:
    posts = all_posts(db, session)
    posts[0].comments
    db.reset()

    def job(dl: Dataloader) -> Any:
        source = dl.with_(AssociationSource, session, Post, "comments")
        loaded = source.request(posts[0])
        assert loaded.ready()  # the attribute is loaded: no batch
        rest = source.request_all(posts[1:])
        assert not rest.ready()
        return loaded.load(), rest.load()

    first, rest = scheduler.with_dataloading(job)
    assert ids(first) == [11, 10, 12] and ids(rest) == [[20], [], [41, 40, 42]]
    (statement, parameters), = db.statements
    assert tuple(parameters) == (2, 3, 4)


def test_unhashable_dataclass_instances(scheduler: Type[Dataloader], db: Database, session: Session) -> None:
    shelf = session.get(Shelf, 1)
    with pytest.raises(TypeError):
        hash(shelf)
    db.reset()
    books = scheduler.with_dataloading(lambda dl: dl.with_(AssociationSource, session, Shelf, "books").load(shelf))
    assert [book.title for book in books] == ["a", "b"]  # no order_by: by primary key
    assert db.count() == 1


def test_values_are_the_same_under_every_scheduler(any_scheduler: Type[Dataloader], db: Database,
                                                   session: Session) -> None:
    posts = all_posts(db, session)

    def view(dl: Dataloader, post: Post) -> Dict[str, Any]:
        comments = dl.with_(AssociationSource, session, Post, "comments").load(post)
        return {
            "author": ids(dl.with_(AssociationSource, session, Post, "author").load(post)),
            "comments": ids(comments),
            "replies": [ids(r) for r in dl.with_(AssociationSource, session, Comment, "replies").load_all(comments)],
            "tags": ids(dl.with_(AssociationSource, session, Post, "tags").load(post)),
        }

    views = any_scheduler.with_dataloading(lambda dl: dl.map(lambda post: view(dl, post), posts))
    with Session(db.engine) as plain:  # SQLAlchemy's own lazy loading
        expected = [{"author": ids(post.author), "comments": ids(post.comments),
                     "replies": [ids(c.replies) for c in post.comments], "tags": ids(post.tags)}
                    for post in plain.scalars(select(Post).order_by(Post.id))]
    assert views == expected


# -- AssociationSource: errors ------------------------------------------------


def test_unknown_relationship(scheduler: Type[Dataloader], session: Session) -> None:
    with pytest.raises(ConfigurationError) as info:
        scheduler.with_dataloading(lambda dl: dl.with_(AssociationSource, session, Post, "nope").load(Post()))
    message = str(info.value)
    assert "dataloader.with_(AssociationSource, session, Post, 'nope')" in message
    assert "Post has no relationship 'nope'" in message
    assert "'author', 'comments', 'tags', 'tags_by_position'" in message

    with pytest.raises(ConfigurationError, match="Post.title is a column, not a relationship"):
        Dataloader().with_(AssociationSource, session, Post, "title")
    with pytest.raises(ConfigurationError, match="'write_only' relationship"):
        Dataloader().with_(AssociationSource, session, User, "memberships")
    with pytest.raises(SourceTypeError, match="not a mapped SQLAlchemy class"):
        Dataloader().with_(AssociationSource, session, post_tags, "tags")
    with pytest.raises(ConfigurationError, match="that relationship belongs to .*Comment.*, not to Post"):
        Dataloader().with_(AssociationSource, session, Post, Comment.replies)
    source = Dataloader().with_(AssociationSource, session, Post, Post.comments)  # the attribute works too
    assert source.name == "comments" and repr(source) == "AssociationSource(session, Post, 'comments')"


@pytest.mark.parametrize("method", ["load", "load_all", "request", "merge"])
def test_a_key_that_is_not_an_instance_of_the_model(any_scheduler: Type[Dataloader], db: Database,
                                                    session: Session, method: str) -> None:
    comment = session.get(Comment, 10)
    calls = {
        "load": lambda source: source.load(comment),
        "load_all": lambda source: source.load_all([session.get(Post, 1), comment]),
        "request": lambda source: source.request(comment),
        "merge": lambda source: source.merge({comment: []}),
    }

    def job(dl: Dataloader) -> Any:
        return calls[method](dl.with_(AssociationSource, session, Post, "comments"))

    with pytest.raises(KeyTypeError) as info:
        any_scheduler.with_dataloading(job)  # raised in the job, at once: never a hang
    message = str(info.value)
    assert "AssociationSource(session, Post, 'comments')" in message
    assert "<Comment 10> (Comment)" in message
    assert "Pass a Post instance" in message and "RecordSource" in message
    assert info.value.key is comment


def test_an_id_instead_of_an_instance(scheduler: Type[Dataloader], session: Session) -> None:
    with pytest.raises(KeyTypeError, match=r"got 1 \(int\)\. Pass a Post instance"):
        scheduler.with_dataloading(lambda dl: dl.with_(AssociationSource, session, Post, "author").load(1))


def test_detached_instances_and_other_sessions(any_scheduler: Type[Dataloader], db: Database,
                                               session: Session) -> None:
    detached = session.get(Post, 1)
    assert detached is not None
    session.expunge(detached)
    with Session(db.engine) as other:
        foreign = other.get(Post, 2)
        assert foreign is not None

        def load(instance: Post) -> Any:
            return any_scheduler.with_dataloading(
                lambda dl: dl.with_(AssociationSource, session, Post, "comments").load(instance))

        with pytest.raises(InstanceStateError, match=r"is detached .*session\.add\(\)"):
            load(detached)
        with pytest.raises(InstanceStateError, match="in another Session") as info:
            load(foreign)
        assert "AssociationSource(session, Post, 'comments').load(<Post 2>)" in str(info.value)
        assert isinstance(info.value, FiberloaderError)
        foreign.comments  # loaded in its own session: any source may return it
        assert ids(load(foreign)) == [20]


def test_an_instance_that_leaves_the_session_before_the_fetch(scheduler: Type[Dataloader], db: Database,
                                                              session: Session) -> None:
    posts = all_posts(db, session)

    def job(dl: Dataloader) -> Any:
        source = dl.with_(AssociationSource, session, Post, "comments")
        handles = source.request_all(posts[:2])
        session.expunge(posts[1])
        try:
            handles.load()
        except InstanceStateError as error:
            return [ids(source.load(posts[0])), str(error)]
        return None

    first, message = scheduler.with_dataloading(job)
    assert first == [11, 10, 12] and "<Post 2>" in message and "detached" in message


# -- AsyncDataloader: fetches take turns on a session -------------------------


def test_async_fetches_take_turns_on_one_session(db: Database) -> None:
    import gevent

    active: List[int] = [0, 0]  # now, most at once

    @event.listens_for(db.engine, "before_cursor_execute")
    def slow(*args: Any) -> None:  # a cooperative driver: other greenlets run meanwhile
        active[0] += 1
        active[1] = max(active)
        gevent.sleep(0.01)
        active[0] -= 1

    def job(session_a: Session, session_b: Session) -> Any:
        def run(dl: Dataloader) -> Any:
            handles = [dl.with_(RecordSource, session_a, User).request(1),
                       dl.with_(RecordSource, session_a, Tag).request(1),
                       dl.with_(RecordSource, session_b, Post).request(1)]
            return [handle.load().id for handle in handles]
        scheduler: Type[Dataloader] = getattr(fiberloader, "AsyncDataloader")
        return scheduler.with_dataloading(run)

    with Session(db.engine) as first, Session(db.engine) as second, Session(db.engine) as third:
        assert job(first, first) == [1, 1, 1]
        assert active[1] == 1  # one session: one statement at a time
        active[1] = 0
        # fresh caches, and sessions whose identity maps do not hold the records yet
        assert job(second, third) == [1, 1, 1]
        assert active[1] == 2  # two sessions: their statements overlap
