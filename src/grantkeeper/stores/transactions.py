"""Store operations written once, run on a blocking connection or an asyncio one.

An operation is a generator (psycopg's own generators-and-waits pattern): it yields what it needs done and receives
the answer, and a runner does the I/O. It yields

* `Sql`: a statement of the current transaction (opened by the first one); the runner sends back its result, which
  offers ``fetchone()``, ``fetchall()`` and ``rowcount``. A statement marked ``wait=False`` is one whose result the
  operation ignores: a pipelining runner (PostgreSQL's) sends it with the next one instead of waiting for it, so its
  error, if any, surfaces at the next statement or at the commit, still inside the transaction;
* `COMMIT`: the current transaction ends here (an operation that returns ends its transaction too);
* `Blocking`: local blocking work outside any transaction (taking a liveness signal); an async runner runs it in a
  worker thread.

`transaction` and `query` turn an operation into a store method: ``store.commit(...)`` runs it with the store's own
runner (`SQLStore._perform`, blocking); `AsyncOperation` is the same operation awaited on an async store.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextlib import AbstractContextManager
from typing import Any, Concatenate, Generic, NamedTuple, ParamSpec, Protocol, TypeVar, overload

__all__ = [
    "COMMIT",
    "AsyncOperation",
    "Blocking",
    "Failed",
    "Op",
    "Result",
    "Sql",
    "Tx",
    "operation",
    "perform",
    "perform_batch",
    "perform_batch_async",
    "query",
    "run_on",
    "transaction",
]

P = ParamSpec("P")
T = TypeVar("T")
C = TypeVar("C")


class Sql:
    """One statement with ``?`` placeholders; ``wait=False`` when its result is not looked at. (A slotted class, not
    a NamedTuple: every statement of every store call makes one, and this is the cheaper to build.)

    ``read`` (default: ``wait``) says whether anyone reads the result. Only a batch that sends several operations'
    statements together separates the two: a statement whose result its operation reads, sent without waiting
    because another one of the same round is waited for (`_side_by_side`); a pipelining runner then keeps its
    result apart, and runs every statement nobody reads on one shared cursor (PostgreSQL: a cursor per statement
    costs more than the statement)."""

    __slots__ = ("params", "read", "text", "wait")

    def __init__(self, text: str, params: Any = (), wait: bool = True, read: bool | None = None) -> None:
        self.text = text
        self.params = params
        self.wait = wait
        self.read = wait if read is None else read

    def __repr__(self) -> str:
        return f"Sql({self.text!r}, wait={self.wait})"  # no parameters: they may hold ciphertext or fingerprints


class Blocking(NamedTuple):
    """Call ``fn(*args)`` outside the transaction; its return value is sent back."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


class _Commit:
    __slots__ = ()

    def __repr__(self) -> str:
        return "COMMIT"


COMMIT = _Commit()


class Result(Protocol):
    """What a statement's result offers an operation (a DB-API cursor has it)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


#: A whole operation: statements, commits and blocking calls; returns the operation's value.
Op = Generator[Sql | Blocking | _Commit, Any, T]
#: A part of one transaction: statements only.
Tx = Generator[Sql, Any, T]


class _Executes(Protocol):
    def execute(self, sql: str, params: Any = ..., /) -> Any: ...


def run_on(conn: _Executes, body: Tx[T]) -> T:
    """Run a transaction's statements on a blocking DB-API connection (the caller owns the transaction)."""
    try:
        step = next(body)
        while True:
            step = body.send(conn.execute(step.text, step.params))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class operation(Generic[P, T]):
    """A store method written as an `Op`: ``store.name(...)`` runs it with ``store._perform`` (a blocking runner).
    ``write`` says whether it writes (a transaction) or only reads (autocommit, and retried where the store's
    connections can drop)."""

    def __init__(self, fn: Callable[Concatenate[Any, P], Op[T]], *, write: bool = True) -> None:
        self.fn = fn
        self.write = write
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> operation[P, T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> Callable[P, T]: ...

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        # ``store._perform(fn, write, *args, **kwargs)``: it calls ``fn(store, *args, **kwargs)`` for the generator
        # (again, for a read it runs once more). A partial, not a closure: store methods are hot (token reads).
        return functools.partial(obj._perform, self.fn, self.write)  # type: ignore[attr-defined]


def transaction(fn: Callable[Concatenate[Any, P], Op[T]]) -> operation[P, T]:
    """A store method that writes: its statements run in one transaction (per `COMMIT`)."""
    return operation(fn, write=True)


def query(fn: Callable[Concatenate[Any, P], Op[T]]) -> operation[P, T]:
    """A store method that only reads (idempotent: a runner may start it again on a fresh connection)."""
    return operation(fn, write=False)


class AsyncOperation(Generic[P, T]):
    """The async face of an `operation`, declared on an async store (``commit = AsyncOperation(SQLStore.commit)``):
    ``await store.commit(...)`` runs the same generator with ``store._aperform(fn, write, *args, **kwargs)`` (an
    async runner, which calls ``fn`` on the store's SQL logic)."""

    def __init__(self, op: operation[P, T]) -> None:
        self.op = op
        functools.update_wrapper(self, op.fn)  # type: ignore[arg-type]

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> AsyncOperation[P, T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        fn, write, perform = self.op.fn, self.op.write, obj._aperform  # type: ignore[attr-defined]

        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            return await perform(fn, write, *args, **kwargs)  # type: ignore[no-any-return]

        return run


def perform(op: Op[T], begin: Callable[[], AbstractContextManager[C]], execute: Callable[[C, Sql], Result]) -> T:
    """Run `op` blocking: ``begin()`` opens a transaction and gives its connection, ``execute(conn, step)`` runs a
    statement on it. A transaction is opened at the first statement and ends (commits) at `COMMIT`, at a `Blocking`
    step or when the operation returns; an exception rolls it back (``begin``'s context manager sees it)."""
    try:
        step = next(op)
        while True:
            if type(step) is Sql:
                with begin() as conn:
                    try:
                        while type(step) is Sql:
                            step = op.send(execute(conn, step))
                    except StopIteration as stop:
                        return stop.value  # type: ignore[no-any-return]  # the `with` commits on the way out
            answer = step.fn(*step.args) if isinstance(step, Blocking) else None
            step = op.send(answer)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class Failed(NamedTuple):
    """What an operation of a batch raised, in its place among the results."""

    error: BaseException


def perform_batch(
    ops: Callable[[], list[Op[Any]]],
    begin: Callable[[], AbstractContextManager[C]],
    execute: Callable[[C, Sql], Result],
    *,
    rows: list[object] | None = None,
) -> list[Any]:
    """Run operations whose writes fit in one transaction each (a claim, a commit, a finish) in ONE transaction,
    committed once: group commit. `ops` makes the operations (fresh generators each time it is called).

    First all of them run back to back in one transaction, with nothing between them: the common case, where none
    fails, costs their own statements and one commit. If one raises (a generation conflict, a damaged row), that
    transaction is rolled back whole, nothing of it having been committed, and the batch runs again from fresh
    operations, each between a savepoint and its release, so the one that raises is rolled back alone and the
    others commit together; its place in the returned list holds `Failed`. An operation may therefore start twice:
    what it does before its first statement (a `Blocking` step, such as holding a liveness signal) must be
    idempotent. What it does after its `COMMIT` runs once the shared commit is durable, as it would alone; a second
    transaction of an operation runs on its own, after the batch. If the shared commit fails, every operation
    fails with that error: none of their writes happened.

    `rows` (for a pipelining runner, where each statement waited for is a round trip) names what each operation
    writes (its grant): operations on different rows then run side by side in that first run, one statement of
    each sent together and waited for once, so a batch takes about as many round trips as one operation has
    statements, not as all of them together. Operations on one row keep their order (the second of two starts
    once the first is done); None runs them one after another."""
    for isolated in (False, True):
        done = _edges(_batch_pass(ops(), begin, execute, isolated=isolated, rows=rows))
        if done is not None:
            return done
    raise AssertionError("an isolated batch always finishes")  # pragma: no cover


async def perform_batch_async(
    ops: Callable[[], list[Op[Any]]],
    begin: Callable[[], AbstractContextManager[C]],
    execute: Callable[[C, Sql], Result],
    edge: Callable[[Callable[[], Any]], Awaitable[Any]],
) -> list[Any]:
    """`perform_batch` from an event loop, for a store whose statements do not block (SQLite's, where one takes
    microseconds): the statements run on the calling thread, and only the transaction's edges, which may wait (its
    begin, for the write lock; its commit, for the disk; a rollback), are awaited through `edge` (e.g. run in a
    thread of the store's). Blocking the loop for each statement's few microseconds costs less than handing the
    interpreter lock to and from a worker thread around every statement, which is what a whole batch in a thread
    does."""
    for isolated in (False, True):
        done = await _edges_async(_batch_pass(ops(), begin, execute, isolated=isolated), edge)
        if done is not None:
            return done
    raise AssertionError("an isolated batch always finishes")  # pragma: no cover


#: One run of a batch: it yields each edge of its transaction (a call that may wait: begin, commit, rollback) for
#: its driver to run, is sent the edge's result (or thrown its error), and returns the results (None: run again).
_Pass = Generator[Callable[[], Any], Any, "list[Any] | None"]


def _edges(run: _Pass) -> list[Any] | None:
    """Drive `run`, each edge called here: `_edges_async` with plain calls, where nothing suspends, so its coroutine
    ends at its first step."""
    driving = _edges_async(run, _called)
    try:
        driving.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    driving.close()
    raise AssertionError("a batch driven by plain calls never suspends")  # pragma: no cover


async def _called(edge: Callable[[], Any]) -> Any:
    return edge()


async def _edges_async(run: _Pass, through: Callable[[Callable[[], Any]], Awaitable[Any]]) -> list[Any] | None:
    """Drive `run`, each edge awaited `through` (say, in a thread)."""
    try:
        edge = next(run)
        while True:
            try:
                answer = await through(edge)
            except BaseException as exc:
                edge = run.throw(exc)
            else:
                edge = run.send(answer)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class _Retry(Exception):
    """An operation of a batch run without savepoints raised: roll the shared transaction back, run it isolated."""


#: Run after the operations of a batch without savepoints, before its commit: a pipelining runner sends the
#: statements whose results were not waited for with it, so an error of theirs surfaces here, before anything
#: commits, and the batch is run again isolated instead of failing whole at the commit.
_BARRIER = Sql("SELECT 1")


def _batch_pass(
    ops: list[Op[Any]], begin: Callable[[], AbstractContextManager[C]], execute: Callable[[C, Sql], Result],
    *, isolated: bool, rows: list[object] | None = None,
) -> _Pass:  # fmt: skip
    """One run of `perform_batch`: `isolated`, each operation between a savepoint and its release; else none, and
    None (nothing committed) as soon as one operation raises. Yields the transaction's edges (see `_Pass`)."""
    results: list[Any] = [None] * len(ops)
    pending = _started(ops, results)
    if not pending:
        return results
    resumed: dict[int, Any] = {}  # op index -> the step after its transaction (COMMIT or Blocking)
    transaction = begin()
    conn = yield transaction.__enter__
    try:
        if not isolated and rows is not None:
            _side_by_side(conn, ops, pending, rows, execute, results, resumed)
        for i, first in pending.items() if isolated or rows is None else ():
            if isolated:
                _isolated(conn, i, ops[i], first, execute, results, resumed)
            else:
                _together(conn, i, ops[i], first, execute, results, resumed)
        if not isolated:
            _together(conn, -1, None, _BARRIER, execute, results, resumed)
    except BaseException as exc:
        # Rolled back (the context manager's exit sees the error; it may raise its own mapped one instead).
        suppressed = yield functools.partial(transaction.__exit__, type(exc), exc, exc.__traceback__)
        if isinstance(exc, _Retry):
            for op in ops:
                op.close()
            return None
        if not suppressed:
            raise
    else:
        yield functools.partial(transaction.__exit__, None, None, None)  # the commit: durable once it returns
    _finished(ops, resumed, results, begin, execute)
    return results


def _started(ops: list[Op[Any]], results: list[Any]) -> dict[int, Sql]:
    """Run each operation up to its first statement (its `Blocking` steps run here); the first statement of each
    that has one. An operation that returns or raises before it has its result in `results` already."""
    pending: dict[int, Sql] = {}
    for i, op in enumerate(ops):
        try:
            step = next(op)
            while not isinstance(step, Sql):
                step = op.send(step.fn(*step.args) if isinstance(step, Blocking) else None)
            pending[i] = step
        except StopIteration as stop:
            results[i] = stop.value
        except Exception as exc:
            results[i] = Failed(exc)
    return pending


def _together(
    conn: C, i: int, op: Op[Any] | None, first: Sql, execute: Callable[[C, Sql], Result], results: list[Any],
    resumed: dict[int, Any],
) -> None:  # fmt: skip
    """Run operation `i`'s transaction in the shared one, with no savepoint: `_Retry` if it raises (`op` None: run
    the one statement `first`)."""
    try:
        if op is None:
            execute(conn, first)
            return
        step: Any = first
        while type(step) is Sql:
            step = op.send(execute(conn, step))
        resumed[i] = step
    except StopIteration as stop:
        results[i] = stop.value
    except Exception as exc:
        raise _Retry from exc


def _side_by_side(
    conn: C, ops: list[Op[Any]], pending: dict[int, Sql], rows: list[object], execute: Callable[[C, Sql], Result],
    results: list[Any], resumed: dict[int, Any],
) -> None:  # fmt: skip
    """Run the pending operations in waves of different rows (the n-th operation on a row in the n-th wave); in a
    wave, each round sends the next statement of every operation still running, only the last one waited for
    (which waits for all; none, if no operation reads a result of this round), then hands each its result.
    `_Retry` if one raises."""
    waves: list[dict[int, Sql]] = []
    seen: dict[object, int] = {}
    for i, first in pending.items():
        wave = seen[rows[i]] = seen.get(rows[i], -1) + 1
        if wave == len(waves):
            waves.append({})
        waves[wave][i] = first
    for wave_start in waves:
        running = wave_start
        while running:
            # Waited for at the last statement if any operation reads a result of this round, else not at all.
            last = len(running) - 1 if any(step.wait for step in running.values()) else -1
            try:  # a statement that fails makes the one waited for raise: which operation's it was is not known
                answers = [
                    execute(conn, step if step.wait == (n == last) else _resynced(step, n == last))
                    for n, step in enumerate(running.values())
                ]
            except Exception as exc:
                raise _Retry from exc
            following: dict[int, Sql] = {}
            for (i, _), answer in zip(running.items(), answers, strict=True):
                try:
                    step = ops[i].send(answer)
                except StopIteration as stop:
                    results[i] = stop.value
                    continue
                except Exception as exc:
                    raise _Retry from exc
                if type(step) is Sql:
                    following[i] = step
                else:
                    resumed[i] = step
            running = following


def _resynced(step: Sql, wait: bool) -> Sql:
    """`step` waited for or not as its round decides; whether its result is read stays the operation's say."""
    return Sql(step.text, step.params, wait, step.read)


def _finished(
    ops: list[Op[Any]], resumed: dict[int, Any], results: list[Any], begin: Callable[[], AbstractContextManager[C]],
    execute: Callable[[C, Sql], Result],
) -> None:  # fmt: skip
    """Once the shared commit is durable: each operation from its `COMMIT` on, as it would run alone."""
    for i, step in resumed.items():
        try:
            answer = step.fn(*step.args) if isinstance(step, Blocking) else None
            results[i] = perform(_continued(ops[i], answer), begin, execute)
        except Exception as exc:
            results[i] = Failed(exc)


def _isolated(
    conn: C, i: int, op: Op[Any], first: Sql, execute: Callable[[C, Sql], Result], results: list[Any],
    resumed: dict[int, Any],
) -> None:  # fmt: skip
    """Run operation `i`'s transaction between a savepoint and its release; rolled back to it if it raises. The
    release is waited for inside: a statement of the operation's that a pipelining runner did not wait for fails
    there, and is this operation's failure."""
    savepoint = f"batch_{i}"
    step: Any = first
    execute(conn, Sql(f"SAVEPOINT {savepoint}"))
    try:
        try:
            while type(step) is Sql:
                step = op.send(execute(conn, step))
            resumed[i] = step
        except StopIteration as stop:
            results[i] = stop.value
        execute(conn, Sql(f"RELEASE SAVEPOINT {savepoint}"))
    except Exception as exc:
        resumed.pop(i, None)
        execute(conn, Sql(f"ROLLBACK TO SAVEPOINT {savepoint}"))
        execute(conn, Sql(f"RELEASE SAVEPOINT {savepoint}"))
        results[i] = Failed(exc)


def _continued(op: Op[T], answer: Any) -> Op[T]:
    """`op` from where the batch left it (its transaction committed), `answer` sent in: for `perform`."""
    try:
        step = op.send(answer)
        while True:
            answer = yield step
            step = op.send(answer)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
