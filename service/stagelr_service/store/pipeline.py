"""PostgreSQL: a write transaction's BEGIN sent with its first statement.

psycopg opens a transaction by sending ``BEGIN`` on its own and waiting for the answer
before the first statement, even in pipeline mode: a round trip that carries nothing.
:func:`begin_with` sends both in one pipeline instead (Parse/Bind/Execute of ``BEGIN``,
then of the statement, then one Sync): one round trip. The server runs them in order, as
it would have, so the statement runs inside the transaction, with its own snapshot (READ
COMMITTED), taken after any lock it waits for.

It is used for the statement that opens the live path's write transactions, the touch of
the study row that also locks it (:mod:`.live`). What it changes on the connection is
only who wrote the BEGIN: afterwards psycopg sees a connection in a transaction it began
itself (its ``autocommit`` off), SQLAlchemy's transaction commits or rolls it back as any
other, and a driver error is handled as SQLAlchemy handles one of its own statements
(the ``handle_error`` hooks, a lost link discarding the connection, the error wrapped as
SQLAlchemy's), so the store's 503 and its deadlines see no difference. SQLAlchemy's
``before_cursor_execute`` listeners see the statement (not the BEGIN, as for its own).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from sqlalchemy.engine import Connection, Dialect

__all__ = ["begin_with"]


@cache
def _compiled(
    statement: Any, dialect: Dialect
) -> tuple[str, dict[str, Any], dict[str, Callable[[Any], Any]]]:
    """``statement`` as the driver's SQL, its literal parameters, and the bind processors
    of its parameters (the column types' own: a datetime made UTC, JSON serialized), so
    that the values sent are those SQLAlchemy would send."""
    compiled = statement.compile(dialect=dialect)
    literals: dict[str, Any] = {}
    processors: dict[str, Callable[[Any], Any]] = {}
    for bind, name in compiled.bind_names.items():
        if not bind.required:
            literals[name] = bind.effective_value
        processor = bind.type.bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
    return compiled.string, literals, processors


def _begin_command(driver: Any) -> str:
    """The BEGIN psycopg would send for ``driver``'s next transaction (its isolation level,
    read-only and deferrable settings), as psycopg spells it."""
    from psycopg import IsolationLevel

    parts = ["BEGIN"]
    if driver.isolation_level is not None:
        level = IsolationLevel(driver.isolation_level).name.replace("_", " ")
        parts.append(f"ISOLATION LEVEL {level}")
    if driver.read_only is not None:
        parts.append("READ ONLY" if driver.read_only else "READ WRITE")
    if driver.deferrable is not None:
        parts.append("DEFERRABLE" if driver.deferrable else "NOT DEFERRABLE")
    return " ".join(parts)


def _settable(driver: Any) -> bool:
    """Whether ``driver`` keeps its autocommit flag where :func:`begin_with` resets it
    (psycopg 3.1 to 3.3 do: ``_autocommit``); a psycopg that keeps it elsewhere gets the
    usual separate BEGIN, not a connection left in autocommit."""
    return "_autocommit" in vars(driver)


def begin_with(
    connection: Connection, statement: Any, params: Mapping[str, Any]
) -> int | None:
    """Run ``statement`` (a Core statement that returns no rows) as the first of the
    transaction on ``connection``, its BEGIN in the same round trip; its rowcount.

    None, and nothing sent, where the transaction has begun on the wire already (or the
    connection is not psycopg's, or in autocommit, or a psycopg whose autocommit flag
    this cannot reset): the caller runs the statement as usual then.
    """
    if connection.dialect.driver != "psycopg" or not connection.in_transaction():
        return None
    from psycopg.pq import TransactionStatus

    driver = connection.connection.driver_connection
    if (
        driver is None
        or not _settable(driver)
        or driver.autocommit
        or driver.pgconn.transaction_status != TransactionStatus.IDLE
    ):
        return None
    sql, defaults, processors = _compiled(statement, connection.dialect)
    values = {**defaults, **params}
    for name, processor in processors.items():
        values[name] = processor(values[name])
    begin = _begin_command(driver)
    cursor = driver.cursor()
    # What listens to SQLAlchemy's statements (a statement count) sees this one too.
    connection.dispatch.before_cursor_execute(connection, cursor, sql, values, None, False)
    # psycopg sends its own BEGIN (and waits for it) before a statement of a connection
    # out of autocommit: in autocommit it sends none, and the pipeline carries ours.
    driver.autocommit = True
    try:
        with driver.pipeline():
            driver.execute(begin)
            cursor.execute(sql, values)
    except Exception as exc:
        connection._handle_dbapi_exception(exc, sql, values, cursor, None)
    finally:
        # The transaction is open now (or the connection failed): psycopg's public
        # setter refuses to leave autocommit inside a transaction, so its attribute is
        # set; the connection is then as if psycopg had sent the BEGIN itself.
        driver._autocommit = False
    if driver.autocommit:  # a psycopg that keeps the setting elsewhere: stop here
        raise RuntimeError("psycopg's autocommit could not be restored after BEGIN")
    return int(cursor.rowcount)
