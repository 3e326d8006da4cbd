"""The one place everything is published through: QoS, retain, and the offline spool.

Events and replies (QoS 1, not retained) produced while the broker is unreachable go to a
bounded on-disk spool (SQLite in WAL mode) and are flushed in order after the next connect;
a full spool drops its oldest message, counted. Retained states are not spooled (every
connect re-announces them) and neither are stats or error reports (periodic / best effort).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

from .logs import get_logger
from .stats import Stats

log = get_logger("edged.publisher")


class Spool:
    """FIFO of outbound messages on disk, bounded to ``max_messages``."""

    def __init__(self, path: Path, max_messages: int) -> None:
        self.path = path
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self.db = self._open(path)
        self._count = self.db.execute("SELECT count(*) FROM spool").fetchone()[0]

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
                "payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, corr BLOB, created REAL NOT NULL)"
            )
            db.execute("SELECT count(*) FROM spool").fetchone()
            return db
        except sqlite3.DatabaseError as exc:
            # A corrupt spool is set aside, never a crash loop.
            aside = path.with_suffix(f".corrupt-{int(time.time())}")
            log.warning("spool_corrupt", path=str(path), error=str(exc), moved_to=str(aside))
            for suffix in ("", "-wal", "-shm"):
                p = Path(str(path) + suffix)
                if p.exists():
                    p.rename(Path(str(aside) + suffix))
            return self._open(path)

    def __len__(self) -> int:
        return self._count  # kept in step by put/remove: read every quarter second by the main loop

    def put(self, topic: str, payload: bytes, qos: int, retain: bool, corr: bytes | None) -> int:
        """Append; returns how many old messages were dropped to stay within the bound."""
        with self._lock:
            self.db.execute("INSERT INTO spool (topic, payload, qos, retain, corr, created) VALUES (?, ?, ?, ?, ?, ?)",
                            (topic, payload, qos, int(retain), corr, time.time()))
            self._count += 1
            over = self._count - self.max_messages
            if over > 0:
                self.db.execute("DELETE FROM spool WHERE id IN (SELECT id FROM spool ORDER BY id LIMIT ?)", (over,))
                self._count -= over
            return max(0, over)

    def head(self, n: int) -> list[tuple]:
        with self._lock:
            return self.db.execute("SELECT id, topic, payload, qos, retain, corr FROM spool ORDER BY id LIMIT ?", (n,)).fetchall()

    def remove(self, ids: list[int]) -> None:
        with self._lock:
            self.db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])
            self._count -= len(ids)

    def close(self) -> None:
        with self._lock:
            self.db.close()


class Publisher:
    """Callable with the ``Publish`` signature the lanes use."""

    def __init__(self, send: Callable[..., bool], connected: Callable[[], bool], stats: Stats,
                 spool: Spool | None = None) -> None:
        self._send = send
        self._connected = connected
        self.stats = stats
        self.spool = spool
        self._spooling = False  # set while the spool holds messages: keep order behind them
        self._lock = threading.Lock()

    def __call__(self, topic: str, payload: str | bytes, *, qos: int = 0, retain: bool = False,
                 correlation_data: bytes | None = None) -> bool:
        durable = qos >= 1 and not retain and self.spool is not None
        if durable:
            with self._lock:
                if self._spooling or not self._connected():
                    data = payload.encode() if isinstance(payload, str) else payload
                    dropped = self.spool.put(topic, data, qos, retain, correlation_data)
                    self._spooling = True
                    self.stats.incr("spooled")
                    if dropped:
                        self.stats.incr("spool_dropped", dropped)
                    return True
        return self._send(topic, payload, qos=qos, retain=retain, correlation_data=correlation_data)

    def flush(self, batch: int = 500) -> int:
        """Send what the spool holds, oldest first, while connected. Returns messages sent."""
        if self.spool is None:
            return 0
        sent = 0
        while self._connected():
            with self._lock:
                rows = self.spool.head(batch)
                if not rows:
                    self._spooling = False
                    break
                for _id, topic, payload, qos, retain, corr in rows:
                    self._send(topic, payload, qos=qos, retain=bool(retain), correlation_data=corr)
                self.spool.remove([r[0] for r in rows])
                sent += len(rows)
        if sent:
            self.stats.incr("spool_flushed", sent)
            log.info("spool_flushed", messages=sent)
        return sent

    def depth(self) -> int:
        return len(self.spool) if self.spool is not None else 0
