"""The graphql-ruby guide examples this project started from, ported.

``shared/seeds``: the Async Source Execution guide's connection recipe.
``get_fiber_variables`` hands the parent's connection settings (role, shard,
prevent-writes) to each child greenlet, ``set_fiber_variables`` applies them
there, and ``cleanup_fiber`` releases the greenlet's database connection.
Here with real SQLite connections from a small pool; the recipe needs no
AsyncDataloader, so it runs under every batching scheduler.  (NullDataloader
starts no greenlets, so it calls no lifecycle hooks.)
"""

from __future__ import annotations

import contextvars
import sqlite3
from typing import Any, Dict, Iterator, List, Optional, Type

import pytest

from fiberloader import Dataloader, Source

ROLE: "contextvars.ContextVar[str]" = contextvars.ContextVar("role", default="writing")
SHARD: "contextvars.ContextVar[str]" = contextvars.ContextVar("shard", default="default")


class Pool:
    """A connection pool: one SQLite database per shard, connections handed out per holder."""

    def __init__(self, paths: Dict[str, str]) -> None:
        self.paths = paths
        self.free: Dict[str, List[sqlite3.Connection]] = {shard: [] for shard in paths}
        self.checked_out: Dict[int, sqlite3.Connection] = {}
        self.shard_of: Dict[int, str] = {}
        self.opened = 0

    def connection(self, holder: Any) -> sqlite3.Connection:
        """The holder's connection to the current shard (checked out on first use)."""
        key = id(holder)
        if key not in self.checked_out:
            shard = SHARD.get()
            if self.free[shard]:
                conn = self.free[shard].pop()
            else:
                conn = sqlite3.connect(self.paths[shard])
                self.opened += 1
            self.shard_of[id(conn)] = shard
            self.checked_out[key] = conn
        return self.checked_out[key]

    def release_connection(self, holder: Any) -> None:
        conn = self.checked_out.pop(id(holder), None)
        if conn is not None:
            self.free[self.shard_of[id(conn)]].append(conn)

    def close(self) -> None:
        for conn in [*self.checked_out.values(), *(c for free in self.free.values() for c in free)]:
            conn.close()


class Holder:
    """What a greenlet keeps its checked-out connection under."""


HOLDER: "contextvars.ContextVar[Optional[Holder]]" = contextvars.ContextVar("holder", default=None)


def make_recipe(base: Type[Dataloader], pool: Pool) -> Type[Dataloader]:
    class ConnectionAwareDataloader(base):  # type: ignore[valid-type, misc]
        def get_fiber_variables(self) -> Any:
            variables = super().get_fiber_variables()
            # Collect the current connection config to pass on:
            return {"context": variables, "connected_to": {"role": ROLE.get(), "shard": SHARD.get()}}

        def set_fiber_variables(self, variables: Any) -> None:
            config = variables.pop("connected_to")
            super().set_fiber_variables(variables["context"])
            # Reset the connection config from the parent:
            ROLE.set(config["role"])
            SHARD.set(config["shard"])
            HOLDER.set(Holder())

        def cleanup_fiber(self) -> None:
            super().cleanup_fiber()
            # Release the current connection:
            pool.release_connection(HOLDER.get())

    return ConnectionAwareDataloader


@pytest.fixture
def pool(tmp_path: Any) -> Iterator[Pool]:
    paths = {}
    for shard in ("default", "eu"):
        path = str(tmp_path / f"{shard}.db")
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
            conn.executemany("INSERT INTO users VALUES (?, ?)",
                             [(i, f"{shard} user {i}") for i in range(1, 6)])
        conn.close()  # "with" commits; it does not close
        paths[shard] = path
    pool = Pool(paths)
    yield pool
    pool.close()


def test_connection_recipe_passes_config_and_releases_every_connection(
    scheduler: Type[Dataloader], pool: Pool
) -> None:
    seen: List[Any] = []

    class Users(Source):
        def fetch(self, ids: List[int]) -> List[Any]:
            seen.append(("fetch", ROLE.get(), SHARD.get()))
            conn = pool.connection(HOLDER.get())
            marks = ", ".join("?" * len(ids))
            rows = dict(conn.execute(f"SELECT id, name FROM users WHERE id IN ({marks})", ids))
            return [rows.get(i) for i in ids]

    def view(dl: Dataloader) -> Any:
        seen.append(("job", ROLE.get(), SHARD.get()))
        return dl.map(dl.with_(Users).load, [1, 2, 3])

    recipe = make_recipe(scheduler, pool)
    ROLE.set("reading")
    SHARD.set("eu")
    try:
        result = recipe.with_dataloading(view)
    finally:
        ROLE.set("writing")
        SHARD.set("default")
    assert result == ["eu user 1", "eu user 2", "eu user 3"]
    assert set(seen) == {("job", "reading", "eu"), ("fetch", "reading", "eu")}
    assert pool.checked_out == {}  # every greenlet gave its connection back
    assert pool.opened >= 1 and len(pool.free["eu"]) == pool.opened


def test_connection_recipe_releases_connections_when_a_job_fails(scheduler: Type[Dataloader], pool: Pool) -> None:
    class Users(Source):
        def fetch(self, ids: List[int]) -> List[Any]:
            conn = pool.connection(HOLDER.get())
            return [conn.execute("SELECT name FROM users WHERE id = ?", (i,)).fetchone()[0] for i in ids]

    recipe = make_recipe(scheduler, pool)
    dataloader = recipe()

    def job(key: int) -> None:
        pool.connection(HOLDER.get())  # the job holds a connection too
        dataloader.with_(Users).load(key)
        if key == 2:
            raise RuntimeError("job failed")

    for key in (1, 2, 3):
        dataloader.append_job(lambda key=key: job(key))
    with pytest.raises(RuntimeError):
        dataloader.run()
    assert pool.checked_out == {}


def test_one_connection_per_greenlet_is_closed_by_cleanup_fiber(scheduler: Type[Dataloader], tmp_path: Any) -> None:
    # The seed's other half: each greenlet opens its own connection on first
    # use and closes it in cleanup_fiber -- after run() none is left open,
    # also when a job failed, and under AsyncDataloader with jobs in I/O.
    import gevent

    path = str(tmp_path / "app.db")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(20)])
    conn.close()
    opened: List[sqlite3.Connection] = []

    class State:
        connection: Optional[sqlite3.Connection] = None

    state: "contextvars.ContextVar[State]" = contextvars.ContextVar("state")

    def db() -> sqlite3.Connection:
        holder = state.get()
        if holder.connection is None:
            holder.connection = sqlite3.connect(path)
            opened.append(holder.connection)
        return holder.connection

    class ConnectionPerGreenlet(scheduler):  # type: ignore[valid-type, misc]
        def set_fiber_variables(self, variables: Any) -> None:
            super().set_fiber_variables(variables)
            state.set(State())

        def cleanup_fiber(self) -> None:
            connection = state.get().connection
            if connection is not None:
                connection.close()

    class Values(Source):
        def fetch(self, ids: List[int]) -> List[Any]:
            marks = ", ".join("?" * len(ids))
            rows = dict(db().execute(f"SELECT id, v FROM t WHERE id IN ({marks})", ids))
            return [rows.get(i) for i in ids]

    def item(dl: Dataloader, key: int) -> Any:
        db().execute("SELECT 1")  # the job uses a connection of its own too
        gevent.sleep(0.001)
        if key == 13:
            raise ValueError("job 13 failed")
        return dl.with_(Values).load(key)

    def closed(connection: sqlite3.Connection) -> bool:
        try:
            connection.execute("SELECT 1")
        except sqlite3.ProgrammingError:
            return True
        return False

    dl = ConnectionPerGreenlet()
    box: List[Any] = []
    dl.append_job(lambda: box.append(dl.map(lambda key: item(dl, key), range(10))))
    dl.run()
    assert box == [[f"v{i}" for i in range(10)]]
    assert opened and all(closed(c) for c in opened)
    opened.clear()
    with pytest.raises(ValueError, match="job 13 failed"):
        dl.map(lambda key: item(dl, key), range(10, 20))
    assert opened and all(closed(c) for c in opened)
