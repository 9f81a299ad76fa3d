"""graphene-sqlalchemy without a resolver of one's own, through fiberloader's GraphQL integration.

The schema of graphene-sqlalchemy's Flask example (departments, employees,
roles, back references both ways), its types plain ``SQLAlchemyObjectType``
subclasses: every relationship field resolves by attribute access, a lazy
load.  With ``batch_lazy_loads`` and a batching dataloader each relationship
costs one statement per level; with the switch off, or under
``NullDataloader``, exactly what graphene's plain execution costs; the data
is always the same.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple, Type

import graphene
import pytest
from graphene_sqlalchemy import SQLAlchemyObjectType
from sqlalchemy import ForeignKey, create_engine, event, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, backref, mapped_column, relationship
from sqlalchemy.pool import StaticPool

from fiberloader import Dataloader, NullDataloader
from fiberloader.graphql import DataloaderExecutionContext
from fiberloader.sqlalchemy import batch_lazy_loads

# -- the models and the schema: no resolver but the root lists ----------------


class Base(DeclarativeBase):
    pass


class Department(Base):
    __tablename__ = "department"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Role(Base):
    __tablename__ = "roles"
    role_id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Employee(Base):
    __tablename__ = "employee"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    department_id: Mapped[int] = mapped_column(ForeignKey("department.id"))
    role_id: Mapped[Optional[int]] = mapped_column(ForeignKey("roles.role_id"))
    department = relationship(Department, backref=backref("employees", uselist=True, order_by="Employee.id"))
    role = relationship(Role, backref=backref("roles", uselist=True, order_by="Employee.id"))


class DepartmentType(SQLAlchemyObjectType):
    class Meta:
        model = Department


class EmployeeType(SQLAlchemyObjectType):
    class Meta:
        model = Employee


class RoleType(SQLAlchemyObjectType):
    class Meta:
        model = Role


class Query(graphene.ObjectType):
    all_departments = graphene.List(DepartmentType)
    all_employees = graphene.List(EmployeeType)

    @staticmethod
    def resolve_all_departments(root: Any, info: Any) -> Any:
        return info.context["session"].scalars(select(Department).order_by(Department.id)).all()

    @staticmethod
    def resolve_all_employees(root: Any, info: Any) -> Any:
        return info.context["session"].scalars(select(Employee).order_by(Employee.id)).all()


SCHEMA = graphene.Schema(query=Query)

DEPARTMENTS = ["Engineering", "Human Resources", "Sales"]
ROLES = ["manager", "engineer", "clerk"]
# employee -> (department, role or None)
EMPLOYEES = {"Peter": (1, 2), "Roy": (1, 2), "Tracy": (2, 1), "Ann": (1, 1), "Bo": (3, 3), "Cy": (3, None),
             "Di": (2, 3), "Ed": (3, 2), "Flo": (1, None)}

# query -> (statements: plain graphene, with batch_lazy_loads in a batching dataloader)
QUERIES: Dict[str, Tuple[str, int, int]] = {
    # the back reference: the departments the root query loaded are not selected again
    "back reference": ("{ allDepartments { name employees { name department { name } } } }", 1 + 3, 2),
    # roles (two are None), role -> employees, their departments, department -> employees
    "both ways": ("""{ allEmployees { name department { name } role { name roles { name department {
                       name employees { name role { name } } } } } } }""", 1 + 3 + 3 + 3 + 3, 5),
    "one level": ("{ allEmployees { name department { name } } }", 1 + 3, 2),
}


class Database:
    def __init__(self) -> None:
        self.engine: Engine = create_engine("sqlite://", poolclass=StaticPool)
        Base.metadata.create_all(self.engine)
        with self.engine.begin() as connection:
            connection.execute(insert(Department), [{"id": i, "name": n} for i, n in enumerate(DEPARTMENTS, 1)])
            connection.execute(insert(Role), [{"role_id": i, "name": n} for i, n in enumerate(ROLES, 1)])
            connection.execute(insert(Employee), [
                {"id": i, "name": name, "department_id": department, "role_id": role}
                for i, (name, (department, role)) in enumerate(EMPLOYEES.items(), 1)])
        self.statements: List[str] = []
        event.listen(self.engine, "before_cursor_execute", lambda conn, cursor, statement, *rest:
                     self.statements.append(statement))

    def execute(self, query: str, scheduler: Optional[Type[Dataloader]] = None) -> Tuple[Any, int]:
        """``result.data`` and the statements: graphene's own execution, or fiberloader's with ``scheduler``."""
        options: Dict[str, Any] = {}
        if scheduler is not None:
            options["execution_context_class"] = type(
                "Context", (DataloaderExecutionContext,), {"dataloader_setting": scheduler})
        with Session(self.engine) as session:
            self.statements.clear()
            result = SCHEMA.execute(query, context_value={"session": session}, **options)
            assert result.errors is None, result.errors
            return result.data, len(self.statements)


@pytest.fixture(scope="module")
def db() -> Iterator[Database]:
    database = Database()
    yield database
    database.engine.dispose()


@pytest.fixture
def lazy() -> Iterator[None]:
    batch_lazy_loads(Base)
    yield
    batch_lazy_loads(Base, enabled=False)


@pytest.mark.parametrize("name", list(QUERIES))
def test_each_relationship_is_one_statement_per_level(db: Database, scheduler: Type[Dataloader], lazy: None,
                                                      name: str) -> None:
    query, naive, minimal = QUERIES[name]
    expected, plain = db.execute(query)
    assert expected and plain == naive
    assert db.execute(query, scheduler) == (expected, minimal)


@pytest.mark.parametrize("name", list(QUERIES))
def test_null_dataloader_costs_what_plain_lazy_loading_costs(db: Database, lazy: None, name: str) -> None:
    """The issue: 25 statements under NullDataloader where plain lazy loading ran 14."""
    query, naive, _ = QUERIES[name]
    assert db.execute(query, NullDataloader) == db.execute(query) == (db.execute(query)[0], naive)


@pytest.mark.parametrize("name", list(QUERIES))
def test_with_the_switch_off_the_count_is_the_naive_one(db: Database, scheduler: Type[Dataloader],
                                                        name: str) -> None:
    query, naive, _ = QUERIES[name]
    assert db.execute(query, scheduler) == db.execute(query) == (db.execute(query)[0], naive)


def test_the_data_is_the_example_data(db: Database, scheduler: Type[Dataloader], lazy: None) -> None:
    data, _ = db.execute(QUERIES["back reference"][0], scheduler)
    departments = data["allDepartments"]
    assert [d["name"] for d in departments] == DEPARTMENTS
    assert [e["name"] for e in departments[0]["employees"]] == ["Peter", "Roy", "Ann", "Flo"]
    assert all(e["department"]["name"] == d["name"] for d in departments for e in d["employees"])
