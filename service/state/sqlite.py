"""The embedded state store: one SQLite file (stdlib ``sqlite3``), shared by the workers of
one replica.

WAL (readers never wait for the writer) and ``synchronous=FULL``: ``add`` returns after the
commit is fsynced, so an acknowledged event survives a crash of the process or the machine.
Calls run on a small thread pool with one connection per thread; each waits at most its
bound (``asyncio.timeout``), and a write waits for another process's write lock at most
``write_timeout_s`` (``busy_timeout``). A recall's read runs in the search thread that
answers it instead (:meth:`SQLiteStore.read_in_thread`, one connection per search
thread): no hand-off of its own, and its bound starts when the read does (short pauses
while the file is locked and a progress handler end it), so a saturated service never
times out a healthy store.
Ids are stored in columns without a declared type, so SQLite keeps each value's storage
class: an int comes back an int, ``"7"`` a str.

The store watches its files: after every write batch (before it is acknowledged) and in
the background at most every ``CHECK_EVERY_S`` it checks that the path still names the
files it opened (device and inode of the database, its WAL and shared memory), and
``PRAGMA quick_check`` runs in the background every ``QUICK_CHECK_EVERY_S`` at least
(longer for a large file). A file removed, replaced or
found corrupt (there, or SQLite itself reporting ``SQLITE_CORRUPT``/``SQLITE_NOTADB``)
breaks the store for good: it logs one error and every later call raises
:class:`StoreUnavailable`, until the service restarts (docs/state.md says what to do).

Tables::

    recent(user, ts, item)                 interactions, the last `window` per user
                                           (WITHOUT ROWID: clustered by user, so an
                                           insert and its trim touch one page)
    shown(user, item, ts)                  impressions, one row per (user, item): latest ts
    log(seq, received, ts, kind, user, item)   every event, `retention_s` after arrival
    disabled(item)                         items made unavailable (availability)
    availability(one, version)             one row: bumped in the transaction of a change
    served(user, at, list)                 each user's last served list (served.py's JSON)
    live(experiment, arm, bundle, bucket, events, hits_10, hits_50, hits_100)
                                           live counts, added in the transaction of the
                                           events they count

A served list is written by the search thread that answered the recall (its reading
connection, ``synchronous=NORMAL``: the WAL is appended, not fsynced), so remembering
costs a recall no hand-off and no fsync; it waits for the write lock at most
``timeout_s`` (an events commit holds it through its fsync), else the list is not
remembered. Those connections leave checkpoints to the checker thread (a passive one
every :data:`CHECKPOINT_EVERY` lists), so a recall does not copy the WAL into the
database and fsync it (:data:`SEARCH_AUTOCHECKPOINT` says when one still does).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import TypeVar

from recall.index.ids import ExternalId
from recall.service.state import served as served_codec
from recall.service.state.base import (
    LIVE_KS,
    Event,
    EventType,
    LiveCount,
    Recent,
    ServedList,
    StoreLimits,
    StoreTimeout,
    StoreUnavailable,
    check_availability,
    check_event,
    check_id,
    check_time,
    id_order,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[ExternalId, ExternalId, float, EventType]
Pending = tuple[list[Row], list[LiveCount], asyncio.Future[None], float]
"""An add waiting for its group commit: rows, live counts, its future, its deadline (loop
time)."""

THREADS = 4
TRIM_EVERY_S = 10.0
"""How often (per process) a write also drops expired log rows and impressions."""
TRIM_CHUNK = 10_000
"""Most log rows one write drops: a trim never holds the write lock for long."""
EXPORT_PAGE = 5_000
GROUP = 20_000
"""Most events one group commit writes."""
WRITER_CACHE_KIB = 64 * 1024
"""Page cache of the writing connection (SQLite's default is 2 MiB): inserts land on random
users' pages, and a larger cache keeps them in memory between commits (~1.5x events/s)."""
IN_CHUNK = 500
"""Most ids in one ``IN (...)`` (SQLite allows 32766 variables; keeps statements small)."""
CHECK_EVERY_S = 1.0
"""How often (at most, per process, while calls come) the files' identity is checked off
the write path; every write batch checks it too, before its events are acknowledged."""
PROGRESS_STEPS = 1000
"""SQLite VM steps between two deadline checks of a read in a search thread (a point read
of one user takes far fewer: the check costs a healthy read nothing)."""
CHECKPOINT_EVERY = 100
"""Served lists remembered (by the process's threads) between two passive checkpoints on
the checker thread. SQLite's automatic checkpoint, run by the commit that takes the WAL
past ``wal_autocheckpoint`` pages (1000 by default: one in ~250 lists), copied the WAL
into the database and fsynced both in that recall's search thread, milliseconds long;
the checker copies and fsyncs instead (docs/performance.md)."""
SEARCH_AUTOCHECKPOINT = 10_000
"""``wal_autocheckpoint`` of the connections that remember lists: the bound on the WAL
(~40 MiB). The WAL starts over only at a write that finds it all checkpointed, a moment
the checker's passive checkpoints seldom leave writes that never pause; a connection's
own automatic checkpoint makes one, once in ~2,500 lists, copying the few pages the
checker left and fsyncing."""
BUSY_PAUSE_S = 50e-6
"""How long a search thread's store call that found the file locked (another worker's
write, an events commit's fsync) pauses before it tries again; twice as long each time,
up to :data:`BUSY_PAUSE_MAX_S`, within the call's bound. SQLite's own busy handler sleeps
1, 2, 5, 10, 15 ms..., so a list that met another worker's 0.1 ms write waited 1 ms."""
BUSY_PAUSE_MAX_S = 1e-3
QUICK_CHECK_EVERY_S = 60.0
"""Least time between two ``PRAGMA quick_check`` runs (each reads the whole file)."""
QUICK_CHECK_SHARE = 0.01
"""Most of one thread's time quick_check may take: the next one waits 100x the last's."""
BROKEN_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
"""SQLite's primary result codes that mean the file is damaged, not busy."""
SUFFIXES = ("", "-wal", "-shm")
"""The files of one database in WAL mode: the database, its log, its shared memory."""

KINDS: tuple[EventType, ...] = ("interaction", "impression")

SCHEMA = """
CREATE TABLE IF NOT EXISTS recent (
    user NOT NULL, ts REAL NOT NULL, item NOT NULL, PRIMARY KEY (user, ts, item)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shown (
    user NOT NULL, item NOT NULL, ts REAL NOT NULL, PRIMARY KEY (user, item)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS shown_ts ON shown (ts);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY, received REAL NOT NULL, ts REAL NOT NULL,
    kind INTEGER NOT NULL, user NOT NULL, item NOT NULL
);
CREATE TABLE IF NOT EXISTS disabled (item NOT NULL PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS availability (
    one INTEGER PRIMARY KEY CHECK (one = 0), version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS served (
    user NOT NULL PRIMARY KEY, at REAL NOT NULL, list BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS served_at ON served (at);
CREATE TABLE IF NOT EXISTS live (
    experiment TEXT NOT NULL, arm TEXT NOT NULL, bundle TEXT NOT NULL, bucket REAL NOT NULL,
    events INTEGER NOT NULL, {hits},
    PRIMARY KEY (experiment, arm, bundle, bucket)
) WITHOUT ROWID;
""".replace("{hits}", ", ".join(f"hits_{k} INTEGER NOT NULL" for k in LIVE_KS))

HITS = ", ".join(f"hits_{k}" for k in LIVE_KS)
ADD_LIVE = (
    f"INSERT INTO live (experiment, arm, bundle, bucket, events, {HITS}) "
    f"VALUES ({', '.join('?' * (5 + len(LIVE_KS)))}) "
    "ON CONFLICT (experiment, arm, bundle, bucket) DO UPDATE SET events = events + "
    "excluded.events, " + ", ".join(f"hits_{k} = hits_{k} + excluded.hits_{k}" for k in LIVE_KS)
)
REMEMBER = (
    "INSERT INTO served (user, at, list) VALUES (?, ?, ?) "
    "ON CONFLICT (user) DO UPDATE SET at = excluded.at, list = excluded.list"
)


class SQLiteStore:
    """:class:`~recall.service.state.base.StateStore` on the SQLite file ``path`` (created, with its
    directory, on first use)."""

    def __init__(
        self,
        path: Path,
        limits: StoreLimits,
        *,
        check_every_s: float | None = None,
        quick_check_every_s: float | None = None,
    ) -> None:
        self.path = path
        self.limits = limits
        # None: the module's CHECK_EVERY_S / QUICK_CHECK_EVERY_S, read when the store opens
        self.check_every_s = CHECK_EVERY_S if check_every_s is None else check_every_s
        self.quick_check_every_s = (
            QUICK_CHECK_EVERY_S if quick_check_every_s is None else quick_check_every_s
        )
        self._executor = ThreadPoolExecutor(THREADS, thread_name_prefix="recall-state")
        # Writes go through one thread: they never wait for each other's lock in-process.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="recall-state-write")
        # The background checks (identity, quick_check) run apart from reads and writes.
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="recall-state-check")
        self._check: asyncio.Task[None] | None = None
        self._check_at = 0.0  # time.monotonic() of the next identity check
        self._quick_check_at = 0.0  # ... and of the next quick_check
        self._check_conn: sqlite3.Connection | None = None  # the running quick_check's
        self._identity: dict[str, tuple[int, int]] | None = None  # suffix -> (st_dev, st_ino)
        self._broken: str | None = None  # why the store refuses every call, once it does
        self._pending: deque[Pending] = deque()
        self._committer: asyncio.Task[None] | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._trim_at = 0.0  # time.monotonic() of the next trim
        self._uncheckpointed = 0  # lists remembered since the last checkpoint was asked for
        self._checkpointing = False  # one asked for and not done
        self._closed = False

    # -- the thread side -------------------------------------------------------------

    def _conn(self, wait_s: float | None = None) -> sqlite3.Connection:
        """This thread's connection, opened on first use (waiting at most ``wait_s``, default
        ``write_timeout_s``, for each lock its set-up takes)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        wait_s = self.limits.write_timeout_s if wait_s is None else wait_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; writes use BEGIN IMMEDIATE, so a
        # writer takes the lock up front and busy_timeout applies (no deadlocked upgrade).
        conn = sqlite3.connect(
            self.path, timeout=wait_s, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {max(1, round(wait_s * 1000))}")
            self._wal(conn, wait_s)
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(SCHEMA)
        except BaseException:
            conn.close()
            raise
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
            if self._identity is None:  # the first connection: these are the store's files
                self._identity = self._stat_files()
        self._check_identity()  # a later connection must have opened the same files
        return conn

    # -- noticing a file removed, replaced or corrupt -----------------------------------

    def _stat_files(self) -> dict[str, tuple[int, int]]:
        """``(st_dev, st_ino)`` of each of the database's files (FileNotFoundError when one
        is gone)."""
        out: dict[str, tuple[int, int]] = {}
        for suffix in SUFFIXES:
            st = os.stat(f"{self.path}{suffix}")
            out[suffix] = (st.st_dev, st.st_ino)
        return out

    def _check_identity(self) -> None:
        """Break the store (and raise) unless the path still names the files it opened."""
        if self._identity is None:
            return
        try:
            now = self._stat_files()
        except FileNotFoundError as e:
            self._break(f"{e.filename} was removed while the store had it open")
        else:
            for suffix, identity in self._identity.items():
                if now[suffix] != identity:
                    self._break(f"{self.path}{suffix} was replaced while the store had it open")

    def _break(self, reason: str) -> None:
        """Refuse every call from now on; log the first reason (once per process)."""
        with self._lock:
            first = self._broken is None
            if first:
                self._broken = reason
        if first:
            logger.error(
                "SQLite state store %s is unusable: %s; event writes answer 503 and recalls "
                "answer from the bundle until the service restarts (see docs/state.md, "
                "'When the file is lost or damaged')",
                self.path,
                reason,
            )
        raise sqlite3.DatabaseError(f"the state store is unusable: {self._broken}")

    def _refuse_if_broken(self) -> None:
        if self._broken is not None:
            raise sqlite3.DatabaseError(f"the state store is unusable: {self._broken}")

    def _note(self, error: sqlite3.Error) -> None:
        """Break the store when SQLite itself says the file is damaged."""
        if getattr(error, "sqlite_errorcode", 0) & 0xFF in BROKEN_CODES:
            with suppress(sqlite3.DatabaseError):
                self._break(f"SQLite reported {error}")

    def _scheduled_check(self, quick: bool) -> float:
        """The identity check and, when ``quick``, ``PRAGMA quick_check`` on a connection of
        its own (it sees every committed page, WAL included); returns the seconds it took."""
        start = time.monotonic()
        self._check_identity()
        if not quick:
            return 0.0
        conn = sqlite3.connect(  # mode=rw: a check never creates a file that went away
            self.path.absolute().as_uri() + "?mode=rw",
            uri=True,
            timeout=self.limits.write_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        self._check_conn = conn
        try:
            rows = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.Error as e:
            if "interrupted" in str(e):  # close() stopped it
                return 0.0
            raise
        finally:
            self._check_conn = None
            conn.close()
        if rows != ["ok"]:
            self._break("PRAGMA quick_check found: " + "; ".join(map(str, rows)))
        return time.monotonic() - start

    def _start_check(self) -> None:
        """Start the background check when one is due (none runs on a caller's time)."""
        now = time.monotonic()
        if now < self._check_at or self._check is not None or self._broken is not None:
            return
        self._check_at = now + self.check_every_s
        quick = now >= self._quick_check_at
        self._check = asyncio.get_running_loop().create_task(self._run_check(quick))

    async def _run_check(self, quick: bool) -> None:
        try:
            took = await asyncio.get_running_loop().run_in_executor(
                self._checker, self._scheduled_check, quick
            )
            if quick:
                wait = max(self.quick_check_every_s, took / QUICK_CHECK_SHARE)
                self._quick_check_at = time.monotonic() + wait
        except sqlite3.Error as e:
            self._note(e)  # a damaged file breaks the store; anything else: next time
        except (OSError, RuntimeError) as e:  # e.g. a full disk, the executor shut down
            logger.debug("state store check failed: %s", e)
        finally:
            self._check = None

    def _wal(self, conn: sqlite3.Connection, wait_s: float) -> None:
        """Switch the file to WAL (once per file). Two processes opening a new file race for
        this and the loser gets "database is locked" without the busy handler: retry it for
        at most ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                    return
                raise sqlite3.OperationalError("the file refused WAL mode")
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _add(
        self, rows: list[Row], live: Sequence[LiveCount] = (), wait_s: float | None = None
    ) -> None:
        """One transaction; waits at most ``wait_s`` for another process's write lock. Raises
        after the commit when the path no longer names the file written (not acknowledged)."""
        self._refuse_if_broken()
        conn = self._conn()
        if not getattr(self._local, "writer", False):  # the writer thread's connection
            conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            self._local.writer = True
        if wait_s is not None:  # the group's earliest deadline, not the connection's default
            conn.execute(f"PRAGMA busy_timeout = {max(1, int(wait_s * 1000))}")
        now = time.time()
        interactions = [(u, ts, i) for u, i, ts, kind in rows if kind == "interaction"]
        impressions = [(u, i, ts) for u, i, ts, kind in rows if kind == "impression"]
        users = list(dict.fromkeys(u for u, _, _ in interactions))
        with _write_transaction(conn):
            conn.executemany(
                "INSERT INTO log (received, ts, kind, user, item) VALUES (?, ?, ?, ?, ?)",
                [(now, ts, KINDS.index(kind), u, i) for u, i, ts, kind in rows],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO recent (user, ts, item) VALUES (?, ?, ?)", interactions
            )
            conn.executemany(
                "INSERT INTO shown (user, item, ts) VALUES (?, ?, ?) ON CONFLICT (user, item) "
                "DO UPDATE SET ts = max(ts, excluded.ts)",
                impressions,
            )
            conn.executemany(  # keep each user's newest `window` (by ts, then item)
                "DELETE FROM recent WHERE user = ?1 AND (ts, item) <= (SELECT ts, item "
                "FROM recent WHERE user = ?1 ORDER BY ts DESC, item DESC LIMIT 1 OFFSET ?2)",
                [(u, self.limits.window) for u in users],
            )
            conn.executemany(
                ADD_LIVE,
                [(c.experiment_id, c.arm, c.bundle_id, c.bucket, c.events, *c.hits) for c in live],
            )
            if time.monotonic() >= self._trim_at:
                self._trim(conn, now)
        self._check_identity()  # committed to the file a restart opens, or not acknowledged

    def _trim(self, conn: sqlite3.Connection, now: float) -> None:
        """Drop impressions past the TTL and up to TRIM_CHUNK log rows past retention (the
        oldest rowids: arrival order, so no index on ``received`` is needed)."""
        conn.execute("DELETE FROM shown WHERE ts < ?", (now - self.limits.shown_ttl_s,))
        conn.execute(
            "DELETE FROM served WHERE user IN (SELECT user FROM served WHERE at < ? LIMIT ?)",
            (now - self.limits.served_ttl_s, TRIM_CHUNK),
        )
        conn.execute("DELETE FROM live WHERE bucket < ?", (now - self.limits.retention_s,))
        deleted = conn.execute(
            "DELETE FROM log WHERE seq IN (SELECT seq FROM (SELECT seq, received FROM log "
            "ORDER BY seq LIMIT ?) WHERE received < ?)",
            (TRIM_CHUNK, now - self.limits.retention_s),
        ).rowcount
        more = deleted == TRIM_CHUNK  # more expired rows wait: trim again at the next write
        self._trim_at = time.monotonic() + (0.0 if more else TRIM_EVERY_S)

    def _select_by_user(
        self,
        sql: str,
        user_ids: list[ExternalId],
        bound: float,
        conn: sqlite3.Connection | None = None,
    ) -> list[tuple[ExternalId, ExternalId, float]]:
        """``sql`` (with ``{ids}`` for the placeholders and one ``?`` for ``bound``) over
        ``user_ids`` in chunks, on ``conn`` (default: this thread's): rows ``(user, item,
        ts)``."""
        conn = conn or self._conn()
        out: list[tuple[ExternalId, ExternalId, float]] = []
        for start in range(0, len(user_ids), IN_CHUNK):
            chunk = user_ids[start : start + IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            out.extend(conn.execute(sql.format(ids=marks), [*chunk, bound]))
        return out

    def _recent(
        self, user_ids: list[ExternalId], after: float, conn: sqlite3.Connection | None = None
    ) -> Recent:
        rows = self._select_by_user(
            "SELECT user, item, ts FROM recent WHERE user IN ({ids}) AND ts > ? ORDER BY ts, item",
            user_ids,
            after,
            conn,
        )
        # 7 and "7" are different keys
        per_user: dict[ExternalId, list[tuple[ExternalId, float]]] = {}
        for user, item, ts in rows:
            per_user.setdefault(user, []).append((item, ts))
        # The table is capped on insert; cut again in case `window` shrank since.
        return [per_user.get(u, [])[-self.limits.window :] for u in user_ids]

    def _shown(
        self, user_ids: list[ExternalId], since: float, conn: sqlite3.Connection | None = None
    ) -> list[list[ExternalId]]:
        rows = self._select_by_user(
            "SELECT user, item, ts FROM shown WHERE user IN ({ids}) AND ts >= ? ORDER BY ts",
            user_ids,
            since,
            conn,
        )
        per_user: dict[ExternalId, list[ExternalId]] = {}
        for user, item, _ in rows:
            per_user.setdefault(user, []).append(item)
        return [per_user.get(u, []) for u in user_ids]

    def _reader(self) -> sqlite3.Connection:
        """This (search) thread's connection, set up for calls bounded by ``timeout_s`` from
        their start (``self._local.deadline``, monotonic): a progress handler interrupts a
        query running past it, and a lock found taken fails at once (no busy handler:
        :meth:`_on_reader` pauses and retries)."""
        conn = self._conn(self.limits.timeout_s)
        local = self._local
        if not getattr(local, "reader", False):
            conn.set_progress_handler(lambda: time.monotonic() > local.deadline, PROGRESS_STEPS)
            conn.execute("PRAGMA busy_timeout = 0")
            local.reader = True
        return conn

    def read_in_thread(
        self, user_ids: Sequence[ExternalId], after: float, shown_since: float | None
    ) -> tuple[Recent, list[list[ExternalId]] | None]:
        """:meth:`recent` and, when ``shown_since`` is given, :meth:`shown`, in the calling
        thread (a search thread; blocking), within ``timeout_s`` of the moment it starts.
        Raises :class:`StoreUnavailable`, :class:`StoreTimeout` past the bound. (A read
        stuck in the kernel, on a hung disk, is not interrupted: nor would the bundle's
        memory maps on that disk be.)"""
        self._check_usable("read")
        ids = _ids(user_ids)
        after = check_time(after)
        since = None
        if shown_since is not None:  # exact TTL, trimmed or not
            since = max(check_time(shown_since), time.time() - self.limits.shown_ttl_s)

        def read(conn: sqlite3.Connection) -> tuple[Recent, list[list[ExternalId]] | None]:
            recent = self._recent(ids, after, conn)
            return recent, None if since is None else self._shown(ids, since, conn)

        return self._on_reader("read", read)

    def remember_in_thread(self, lists: Sequence[ServedList]) -> None:
        """:meth:`remember` in the calling (search) thread, on its reading connection,
        within ``timeout_s`` of the moment it starts."""
        self._check_usable("write")
        rows = _served_rows(lists)
        self._on_reader("remember", partial(self._remember, rows))

    def _check_usable(self, op: str) -> None:
        """:class:`StoreUnavailable` when the store is closed or unusable (``op``: the
        call's name in the message)."""
        if self._closed:
            raise StoreUnavailable("the state store is closed")
        if self._broken is not None:
            raise StoreUnavailable(f"SQLite {op} refused: the store is unusable: {self._broken}")

    def _on_reader(self, op: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` on the calling thread's reading connection, interrupted ``timeout_s``
        after it starts and tried again after a short pause (:data:`BUSY_PAUSE_S`) while
        the file is locked; SQLite's errors as :class:`StoreTimeout` /
        :class:`StoreUnavailable`. ``work`` must be all or nothing (one statement, or one
        transaction)."""
        try:
            conn = self._reader()
            deadline = time.monotonic() + self.limits.timeout_s
            self._local.deadline = deadline
            pause = BUSY_PAUSE_S
            while True:
                try:
                    return work(conn)
                except sqlite3.OperationalError as e:
                    if not _busy(e) or time.monotonic() + pause > deadline:
                        raise
                time.sleep(pause)
                pause = min(2 * pause, BUSY_PAUSE_MAX_S)
        except sqlite3.Error as e:
            self._note(e)
            if "interrupted" in str(e) or "locked" in str(e):
                bound = self.limits.timeout_s
                raise StoreTimeout(f"SQLite {op} took longer than {bound:g} s ({e})") from None
            raise StoreUnavailable(f"SQLite {op} failed: {e}") from e
        except OSError as e:
            raise StoreUnavailable(f"SQLite {op} failed: {e}") from e

    def _remember(
        self, rows: list[tuple[ExternalId, float, bytes]], conn: sqlite3.Connection | None = None
    ) -> None:
        """The served lists ``rows`` in one transaction, without an fsync (this connection's
        ``synchronous=NORMAL``: a served list need not survive a power cut)."""
        conn = conn or self._conn()
        if not getattr(self._local, "relaxed", False):  # never the writer's connection
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint = {SEARCH_AUTOCHECKPOINT}")
            self._local.relaxed = True
        if len(rows) == 1:
            conn.execute(REMEMBER, rows[0])  # its own transaction
        else:
            with _write_transaction(conn):
                conn.executemany(REMEMBER, rows)
        self._checkpoint_soon(len(rows))

    def _checkpoint_soon(self, lists: int) -> None:
        """Every :data:`CHECKPOINT_EVERY` lists remembered, a passive checkpoint on the
        checker thread (one at a time)."""
        with self._lock:
            self._uncheckpointed += lists
            if self._uncheckpointed < CHECKPOINT_EVERY or self._checkpointing or self._closed:
                return
            self._uncheckpointed, self._checkpointing = 0, True
        try:
            self._checker.submit(self._checkpoint)
        except RuntimeError:  # shut down meanwhile
            self._checkpointing = False

    def _checkpoint(self) -> None:
        """``PRAGMA wal_checkpoint(PASSIVE)`` on this (checker) thread's connection: the WAL
        pages no reader still needs copied into the database, waiting for no lock."""
        try:
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except (sqlite3.Error, OSError) as e:  # the next one tries again
            if isinstance(e, sqlite3.Error):
                self._note(e)
            logger.debug("state store checkpoint failed: %s", e)
        finally:
            self._checkpointing = False

    def _served(self, user_ids: list[ExternalId]) -> list[ServedList | None]:
        since = time.time() - self.limits.served_ttl_s
        found: dict[ExternalId, ServedList] = {}
        conn = self._conn()
        for start in range(0, len(user_ids), IN_CHUNK):
            chunk = user_ids[start : start + IN_CHUNK]
            sql = f"SELECT user, list FROM served WHERE user IN ({','.join('?' * len(chunk))}) "
            for user, value in conn.execute(sql + "AND at >= ?", [*chunk, since]):
                found[user] = served_codec.decode(user, value)
        return [found.get(u) for u in user_ids]

    def _live_counts(self, experiment_id: str) -> list[LiveCount]:
        rows = self._conn().execute(
            f"SELECT arm, bundle, bucket, events, {HITS} FROM live WHERE experiment = ?",
            (experiment_id,),
        )
        return [
            LiveCount(experiment_id, arm, bundle, bucket, events, tuple(hits))
            for arm, bundle, bucket, events, *hits in rows
        ]

    def _export_page(self, after_seq: int, since: float | None) -> list[tuple[int, Event]]:
        # Exact retention whenever the rows were trimmed: what arrived before is not exported.
        sql = "SELECT seq, ts, kind, user, item FROM log WHERE seq > ? AND received >= ?"
        args: list[float] = [after_seq, time.time() - self.limits.retention_s]
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        rows = self._conn().execute(sql + " ORDER BY seq LIMIT ?", [*args, EXPORT_PAGE])
        return [(seq, Event(user, item, ts, KINDS[kind])) for seq, ts, kind, user, item in rows]

    def _ping(self) -> None:
        self._conn().execute("SELECT 1").fetchone()

    def _set_availability(self, disable: list[ExternalId], enable: list[ExternalId]) -> int:
        """One transaction on the writer thread: the rows and the version bump together."""
        conn = self._conn()
        conn.execute(f"PRAGMA busy_timeout = {int(self.limits.write_timeout_s * 1000)}")
        with _write_transaction(conn):
            conn.executemany(
                "INSERT OR IGNORE INTO disabled (item) VALUES (?)", [(i,) for i in disable]
            )
            conn.executemany("DELETE FROM disabled WHERE item = ?", [(i,) for i in enable])
            conn.execute(
                "INSERT INTO availability (one, version) VALUES (0, 1) "
                "ON CONFLICT (one) DO UPDATE SET version = version + 1"
            )
            version: int = conn.execute("SELECT version FROM availability").fetchone()[0]
        return version

    def _version(self, conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT version FROM availability").fetchone()
        return 0 if row is None else int(row[0])

    def _availability(self) -> tuple[int, list[ExternalId]]:
        conn = self._conn()
        conn.execute("BEGIN")  # one read snapshot for the version and the rows
        try:
            version = self._version(conn)
            items: list[ExternalId] = [
                item for (item,) in conn.execute("SELECT item FROM disabled")
            ]
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
        return version, sorted(items, key=id_order)

    # -- the event-loop side ---------------------------------------------------------

    async def _call(
        self,
        fn: Callable[[], T],
        bound: float,
        op: str,
        executor: ThreadPoolExecutor | None = None,
    ) -> T:
        self._check_usable(op)
        self._start_check()
        loop = asyncio.get_running_loop()
        pool = executor or self._executor
        try:
            async with asyncio.timeout(bound):  # not wait_for: see StateStore (base.py)
                return await loop.run_in_executor(pool, fn)
        except TimeoutError:
            raise StoreTimeout(f"SQLite {op} took longer than {bound:g} s") from None
        except sqlite3.Error as e:
            self._note(e)
            raise StoreUnavailable(f"SQLite {op} failed: {e}") from e
        except OSError as e:
            raise StoreUnavailable(f"SQLite {op} failed: {e}") from e
        except RuntimeError as e:  # the executor shut down under us
            raise StoreUnavailable(f"SQLite {op} failed: {e}") from e

    async def add(self, events: Sequence[Event], live: Sequence[LiveCount] = ()) -> bool:
        """Group commit: batches that arrive while a commit runs wait for the next one, which
        writes them all in one transaction (one fsync for many concurrent requests)."""
        rows = [check_event(e) for e in events]
        if not rows and not live:
            return True
        if self._closed:
            raise StoreUnavailable("the state store is closed")
        if self._broken is not None:
            raise StoreUnavailable(f"SQLite add refused: the store is unusable: {self._broken}")
        self._start_check()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        done.add_done_callback(_retrieve)  # a caller that timed out never reads it
        self._pending.append((rows, list(live), done, loop.time() + self.limits.write_timeout_s))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_pending())
        try:
            async with asyncio.timeout(self.limits.write_timeout_s):
                await asyncio.shield(done)
        except TimeoutError:
            done.cancel()  # not written unless its group's commit already began
            raise StoreUnavailable(
                f"SQLite add took longer than {self.limits.write_timeout_s:g} s"
            ) from None
        return True

    async def _commit_pending(self) -> None:
        """Commit what is pending, in arrival order, until nothing is; then exit. Adds whose
        caller already gave up are dropped unwritten; a group waits for the write lock only
        until its earliest deadline, so an add that raised was (almost always) not stored."""
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                group: list[Pending] = []
                size = 0
                while self._pending and (not group or size + len(self._pending[0][0]) <= GROUP):
                    entry = self._pending.popleft()
                    if not entry[2].done():
                        group.append(entry)
                        size += len(entry[0])
                if not group:
                    continue
                rows = [row for batch, _, _, _ in group for row in batch]
                live = [count for _, counts, _, _ in group for count in counts]
                # Give up on the lock a little before the earliest caller does.
                wait_s = min(deadline for _, _, _, deadline in group) - loop.time() - 0.02
                error: BaseException | None = None
                try:
                    await loop.run_in_executor(self._writer, self._add, rows, live, wait_s)
                except (sqlite3.Error, OSError, RuntimeError) as e:
                    if isinstance(e, sqlite3.Error):
                        self._note(e)
                    error = StoreUnavailable(f"SQLite add failed: {e}")
                    error.__cause__ = e
                for _, _, done, _ in group:
                    if not done.done():
                        if error is None:
                            done.set_result(None)
                        else:
                            done.set_exception(error)
        finally:
            self._committer = None

    async def recent(
        self, user_ids: Sequence[ExternalId], after: float
    ) -> list[list[tuple[ExternalId, float]]]:
        ids = _ids(user_ids)
        if not ids:
            return []
        after = check_time(after)
        return await self._call(lambda: self._recent(ids, after), self.limits.timeout_s, "recent")

    async def shown(self, user_ids: Sequence[ExternalId], since: float) -> list[list[ExternalId]]:
        ids = _ids(user_ids)
        if not ids:
            return []
        # exact TTL, trimmed or not
        since = max(check_time(since), time.time() - self.limits.shown_ttl_s)
        return await self._call(lambda: self._shown(ids, since), self.limits.timeout_s, "shown")

    async def remember(self, lists: Sequence[ServedList]) -> None:
        rows = _served_rows(lists)
        if rows:
            await self._call(partial(self._remember, rows), self.limits.timeout_s, "remember")

    async def served(self, user_ids: Sequence[ExternalId]) -> list[ServedList | None]:
        ids = _ids(user_ids)
        if not ids:
            return []
        return await self._call(partial(self._served, ids), self.limits.timeout_s, "served")

    async def live_counts(self, experiment_id: str) -> list[LiveCount]:
        return await self._call(
            partial(self._live_counts, experiment_id), self.limits.write_timeout_s, "live_counts"
        )

    async def export(self, since: float | None = None) -> AsyncIterator[Event]:
        after_seq = 0
        while True:
            page = await self._call(
                partial(self._export_page, after_seq, since), self.limits.write_timeout_s, "export"
            )
            for _, event in page:
                yield event
            if len(page) < EXPORT_PAGE:
                return
            after_seq = page[-1][0]

    async def set_availability(
        self, disable: Sequence[ExternalId], enable: Sequence[ExternalId]
    ) -> int:
        off, on = check_availability(disable, enable)
        if not off and not on:
            return await self.availability_version()
        return await self._call(
            partial(self._set_availability, off, on),
            self.limits.write_timeout_s,
            "set_availability",
            self._writer,
        )

    async def availability(self) -> tuple[int, list[ExternalId]]:
        return await self._call(self._availability, self.limits.write_timeout_s, "availability")

    async def availability_version(self) -> int:
        return await self._call(
            lambda: self._version(self._conn()), self.limits.write_timeout_s, "availability_version"
        )

    async def ping(self) -> None:
        await self._call(self._ping, self.limits.write_timeout_s, "ping")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._committer is not None:
            await asyncio.wait([self._committer], timeout=self.limits.write_timeout_s)
        check_conn = self._check_conn
        if check_conn is not None:
            check_conn.interrupt()  # a quick_check of a large file need not finish
        if self._check is not None:
            await asyncio.wait([self._check], timeout=self.limits.write_timeout_s)
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        self._checker.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()


def _retrieve(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()


def _busy(error: sqlite3.Error) -> bool:
    """Whether ``error`` is SQLite's "database is locked" (SQLITE_BUSY: another connection
    holds the lock)."""
    return getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY


def _ids(user_ids: Iterable[object]) -> list[ExternalId]:
    return [check_id(u) for u in user_ids]


@contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` (the write lock up front, so ``busy_timeout`` applies), then
    ``COMMIT``; ``ROLLBACK`` on any error, the error raised."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _served_rows(lists: Sequence[ServedList]) -> list[tuple[ExternalId, float, bytes]]:
    """``(user, served_at, encoded list)`` rows, the last list of a user kept."""
    rows = {check_id(s.user_id): (s.served_at, served_codec.encode(s)) for s in lists}
    return [(user, at, value) for user, (at, value) in rows.items()]
