"""PostgreSQL: a write transaction's first statements sent with its BEGIN, at once.

psycopg opens a transaction by sending ``BEGIN`` on its own and waiting for the answer
before the first statement, even in pipeline mode: a round trip that carries nothing.
:func:`begin_pipeline` sends the BEGIN and the statements in one pipeline instead
(Parse/Bind/Execute of ``BEGIN``, then of each statement, then one Sync): one round trip,
however many statements. The server runs them in order, as it would have, each with its
own snapshot (READ COMMITTED) taken when it starts, so after any lock an earlier one
waited for. What a statement cannot do is read an earlier one's answer: the caller sends
only statements whose values it knows, and checks the answers afterwards.

It is used for the statement that opens the live path's write transactions, the touch of
the study row that also locks it (:func:`begin_with`), and for a decision's whole write
transaction (:meth:`.live.LiveQueries.close_and_issue`). What it changes on the
connection is only who wrote the BEGIN: afterwards psycopg sees a connection in a
transaction it began itself (its ``autocommit`` off), SQLAlchemy's transaction commits
or rolls it back as any other, and a driver error is handled as SQLAlchemy handles one
of its own statements (the ``handle_error`` hooks, a lost link discarding the
connection, the error wrapped as SQLAlchemy's), so the store's 503 and its deadlines see
no difference. SQLAlchemy's ``before_cursor_execute`` listeners see each statement (not
the BEGIN, as for its own).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from types import SimpleNamespace
from typing import Any, NamedTuple

from sqlalchemy.engine import Connection, Dialect

__all__ = ["Answer", "begin_pipeline", "begin_with"]


class Answer(NamedTuple):
    """One statement's answer: its rowcount, and the rows it returned (RETURNING), each
    value as SQLAlchemy's result would give it, by column name."""

    rowcount: int
    rows: list[SimpleNamespace]


@cache
def _compiled(
    statement: Any, dialect: Dialect
) -> tuple[str, dict[str, Any], dict[str, Callable[[Any], Any]]]:
    """``statement`` as the driver's SQL, its literal parameters, and the bind processors
    of its parameters (the column types' own, as the dialect implements them: a datetime
    made UTC, JSON wrapped for psycopg), so that the values sent are those SQLAlchemy
    would send."""
    compiled = statement.compile(dialect=dialect)
    literals: dict[str, Any] = {}
    processors: dict[str, Callable[[Any], Any]] = {}
    for bind, name in compiled.bind_names.items():
        if not bind.required:
            literals[name] = bind.effective_value
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
    return compiled.string, literals, processors


@cache
def _result_processors(
    statement: Any, dialect: Dialect, type_codes: tuple[Any, ...]
) -> tuple[Callable[[Any], Any] | None, ...]:
    """The result processors of the columns ``statement`` returns (its RETURNING), as
    SQLAlchemy's result applies them (an aware UTC datetime out of a timestamp)."""
    columns = list(getattr(statement, "exported_columns", ()))
    if len(columns) != len(type_codes):  # no typed columns to go by: values as read
        return (None,) * len(type_codes)
    return tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, code)
        for column, code in zip(columns, type_codes, strict=True)
    )


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
    """Whether ``driver`` keeps its autocommit flag where :func:`begin_pipeline` resets it
    (psycopg 3.1 to 3.3 do: ``_autocommit``); a psycopg that keeps it elsewhere gets the
    usual separate BEGIN, not a connection left in autocommit."""
    return "_autocommit" in vars(driver)


def _answer(statement: Any, dialect: Dialect, cursor: Any) -> Answer:
    description = cursor.description
    if description is None:
        return Answer(int(cursor.rowcount), [])
    names = [column.name for column in description]
    processors = _result_processors(
        statement, dialect, tuple(column.type_code for column in description)
    )
    rows = [
        SimpleNamespace(
            **{
                name: value if processor is None else processor(value)
                for name, value, processor in zip(names, row, processors, strict=True)
            }
        )
        for row in cursor.fetchall()
    ]
    return Answer(int(cursor.rowcount), rows)


def begin_pipeline(
    connection: Connection, statements: Sequence[tuple[Any, Mapping[str, Any]]]
) -> list[Answer] | None:
    """Run ``statements`` (Core statements, each with its parameters) as the first of the
    transaction on ``connection``, with its BEGIN, in one round trip; their answers, in
    order.

    None, and nothing sent, where the transaction has begun on the wire already (or the
    connection is not psycopg's, or in autocommit, or a psycopg whose autocommit flag
    this cannot reset): the caller runs the statements as usual then. A statement that
    fails (the server skips the ones after it) raises as SQLAlchemy raises its own
    statements' errors, the transaction left for the caller to roll back.
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
    dialect = connection.dialect
    sent: list[tuple[str, dict[str, Any], Any]] = []
    for statement, params in statements:
        sql, defaults, processors = _compiled(statement, dialect)
        values = {**defaults, **params}
        for name, processor in processors.items():
            values[name] = processor(values[name])
        cursor = driver.cursor()
        # What listens to SQLAlchemy's statements (a statement count) sees these too.
        connection.dispatch.before_cursor_execute(connection, cursor, sql, values, None, False)
        sent.append((sql, values, cursor))
    begin = _begin_command(driver)
    # psycopg sends its own BEGIN (and waits for it) before a statement of a connection
    # out of autocommit: in autocommit it sends none, and the pipeline carries ours.
    driver.autocommit = True
    failure: Exception | None = None
    try:
        with driver.pipeline():
            try:
                driver.execute(begin)
                for sql, values, cursor in sent:
                    cursor.execute(sql, values)
            except Exception as exc:
                # A failed answer read while the rest was being sent (psycopg reads what
                # it can as it sends): the pipeline still ends with its Sync, whose own
                # error (the statements skipped) is not the one to tell.
                failure = exc
        if failure is not None:
            raise failure
    except Exception as exc:
        # The statement that failed is the first without an answer (the ones after it
        # were skipped; a lost connection answered none).
        sql, values, cursor = next((s for s in sent if s[2].pgresult is None), sent[0])
        connection._handle_dbapi_exception(failure or exc, sql, values, cursor, None)
    finally:
        # The transaction is open now (or the connection failed): psycopg's public
        # setter refuses to leave autocommit inside a transaction, so its attribute is
        # set; the connection is then as if psycopg had sent the BEGIN itself.
        driver._autocommit = False
    if driver.autocommit:  # a psycopg that keeps the setting elsewhere: stop here
        raise RuntimeError("psycopg's autocommit could not be restored after BEGIN")
    return [
        _answer(statement, dialect, cursor)
        for (statement, _), (_, _, cursor) in zip(statements, sent, strict=True)
    ]


def begin_with(connection: Connection, statement: Any, params: Mapping[str, Any]) -> int | None:
    """Run ``statement`` (a Core statement that returns no rows) as the first of the
    transaction on ``connection``, its BEGIN in the same round trip (:func:`begin_pipeline`);
    its rowcount, or None where the caller runs it as usual."""
    answers = begin_pipeline(connection, [(statement, params)])
    return None if answers is None else answers[0].rowcount
