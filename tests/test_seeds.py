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
from typing import Any, Dict, List, Optional, Type

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
def pool(tmp_path: Any) -> Pool:
    paths = {}
    for shard in ("default", "eu"):
        path = str(tmp_path / f"{shard}.db")
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
            conn.executemany("INSERT INTO users VALUES (?, ?)",
                             [(i, f"{shard} user {i}") for i in range(1, 6)])
        paths[shard] = path
    return Pool(paths)


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
