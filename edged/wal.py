"""The write-ahead log of ``[durability] mode = "strict"``: QoS 1 readings on disk before their ack.

Layout: ``<state_dir>/wal/<first sequence number, 20 digits>.wal`` segments. A segment is a
24-byte header — magic ``EDGEDWAL``, u16 format version, u16 zero, u64 first sequence number,
u32 CRC32 of those 20 bytes — then records, little-endian:

    u32 body length | u32 CRC32(body) | body
    body, kind 1 (reading): u8 1 | u64 seq | f64 received | u16 mid | u8 qos | u8 flags (1 dup, 2 retain)
                            | u16 topic length | topic (UTF-8) | payload
    body, kind 2 (applied): u8 2 | u64 seq   — the sensor lane had applied every reading up to seq,
                                               so their events had been handed to the publisher

One writer thread appends; one ``fdatasync`` covers every record of a group commit. A crash can
only tear the end of the newest segment: reading stops at the first record whose length, CRC,
kind or sequence number is wrong (logged ``wal_torn_tail``; at start the file is cut back there).
A segment whose header is wrong is renamed ``*.bad-<time>`` (``wal_set_aside``) — never a crash
loop. Segments whose readings a snapshot covers are deleted after that snapshot (``checkpoint``).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .logs import get_logger
from .messages import RawMessage
from .stats import Stats

log = get_logger("edged.wal")

MAGIC = b"EDGEDWAL"
VERSION = 1
_HEADER = struct.Struct("<8sHHQ")  # magic, version, reserved, first seq; then u32 CRC of these
HEADER_SIZE = _HEADER.size + 4
_FRAME = struct.Struct("<II")  # body length, CRC32(body)
_READING = struct.Struct("<BQdHBBH")  # kind, seq, received, mid, qos, flags, topic length
_APPLIED = struct.Struct("<BQ")
KIND_READING, KIND_APPLIED = 1, 2
FLAG_DUP, FLAG_RETAIN = 1, 2
# MQTT topics are at most 65535 bytes; payloads over sensors.max_payload_bytes are rejected
# before the WAL. A longer length field can only be a torn or corrupt frame.
MAX_BODY = 16 * 1024 * 1024 + _READING.size + 65535
_NAME = re.compile(r"^(\d{20})\.wal$")

# Group commit: commit what is pending once COMMIT_DELAY_S has passed since the oldest pending
# reading arrived, or at once when BATCH_MAX are pending — whichever comes first. The broker
# stops sending when its in-flight window towards edged is full of unacknowledged readings
# (Mosquitto: max_inflight_messages, default 20), so a commit must never wait for a batch that
# window cannot fill. (Mosquitto 2.0.11 holds to the window only loosely once acks flow: a few
# hundred pending were measured with 20; the policy does not depend on the window's size.)
COMMIT_DELAY_S = 0.002
BATCH_MAX = 1024
MARK_IDLE_S = 0.1  # when idle, how soon an `applied` mark follows the lane's progress
RETRY_S = 1.0  # after a failed write or fsync
# Packet ids are 16-bit: a session never has more QoS 1 messages unacknowledged, so pending
# readings never exceed it (in practice far fewer: the broker's in-flight window towards edged —
# over MQTT v5 at most the Receive Maximum edged announces, mqtt.max_inflight_messages).
MAX_UNACKED = 65535


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.wal"


def encode_header(first_seq: int) -> bytes:
    head = _HEADER.pack(MAGIC, VERSION, 0, first_seq)
    return head + struct.pack("<I", zlib.crc32(head))


def _frame(body: bytes) -> bytes:
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def encode_reading(seq: int, msg: RawMessage) -> bytes:
    topic = msg.topic.encode()
    flags = (FLAG_DUP if msg.dup else 0) | (FLAG_RETAIN if msg.retain else 0)
    return _frame(_READING.pack(KIND_READING, seq, msg.received, msg.mid, msg.qos, flags, len(topic)) + topic
                  + bytes(msg.payload))


def encode_applied(seq: int) -> bytes:
    return _frame(_APPLIED.pack(KIND_APPLIED, seq))


class WalFormatError(Exception):
    pass


@dataclass
class Segment:
    path: Path
    first_seq: int
    end: int = HEADER_SIZE  # offset after the last valid record
    last_seq: int = 0  # the last reading's seq; first_seq - 1 when it holds none
    readings: int = 0
    size: int = 0


@dataclass
class WalState:
    """What a scan of the WAL directory found."""

    segments: list[Segment] = field(default_factory=list)
    last_seq: int = 0  # highest reading seq (0: none)
    applied: int = 0  # highest `applied` mark (0: none)
    readings: int = 0


def _read_header(fh: BinaryIO, path: Path) -> int:
    raw = fh.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        raise WalFormatError(f"header is {len(raw)} bytes, {HEADER_SIZE} expected")
    magic, version, _, first = _HEADER.unpack(raw[:_HEADER.size])
    if magic != MAGIC:
        raise WalFormatError("not an edged WAL segment (bad magic)")
    if version != VERSION:
        raise WalFormatError(f"format version {version}, this edged reads {VERSION}")
    if struct.unpack("<I", raw[_HEADER.size:])[0] != zlib.crc32(raw[:_HEADER.size]):
        raise WalFormatError("header checksum mismatch")
    named = _NAME.match(path.name)
    if named and int(named.group(1)) != first:
        raise WalFormatError(f"header says first seq {first}, the name {path.name}")
    return first


def _records(fh: BinaryIO, first_seq: int, stop_at: int | None = None) -> Iterator[tuple[int, int, bytes]]:
    """(end offset, kind, body) of each valid record after the header; stops at the first bad one.

    Valid: a whole frame, CRC matches, a known kind, reading seqs strictly increasing from
    ``first_seq``. The caller learns where it stopped from the last end offset."""
    prev = first_seq - 1
    offset = HEADER_SIZE
    while stop_at is None or offset < stop_at:
        frame = fh.read(_FRAME.size)
        if len(frame) < _FRAME.size:
            return
        length, crc = _FRAME.unpack(frame)
        if not 1 <= length <= MAX_BODY:
            return
        body = fh.read(length)
        if len(body) < length or zlib.crc32(body) != crc:
            return
        kind = body[0]
        if kind == KIND_READING:
            if length < _READING.size:
                return
            _, seq, _, _, _, _, topic_len = _READING.unpack_from(body)
            if seq <= prev or _READING.size + topic_len > length:
                return
            prev = seq
        elif kind != KIND_APPLIED or length != _APPLIED.size:
            return
        offset += _FRAME.size + length
        yield offset, kind, body


def _cut_back(seg: Segment, newest: bool) -> None:
    """A segment whose records stop before its end. Only the newest can be torn by a crash; a bad
    frame in an older one is corruption: a copy is kept for inspection before it is cut back."""
    path, ignored = seg.path, seg.size - seg.end
    if newest:
        log.warning("wal_torn_tail", path=str(path), offset=seg.end, ignored_bytes=ignored,
                    hint="the end of the log was torn by a crash (or is corrupt); readings before it are replayed")
    else:
        aside = path.with_name(f"{path.name}.bad-{int(time.time())}")
        try:
            shutil.copyfile(path, aside)
        except OSError:
            aside = None
        log.error("wal_corrupt_segment", path=str(path), offset=seg.end, ignored_bytes=ignored,
                  copy=str(aside) if aside else None,
                  hint="readings after the bad record in this segment are not replayed; later segments are")
    try:
        os.truncate(path, seg.end)  # so that the next start does not warn again
        seg.size = seg.end
    except OSError as exc:
        log.warning("wal_truncate_failed", path=str(path), error=exc.strerror or str(exc))


def scan(directory: Path, repair: bool = False) -> WalState:
    """Read every segment's header and records. With ``repair`` (the daemon at start): set aside
    segments with a bad header, remove empty ones, cut torn tails off, and log each; without it
    (tools, tests) only look."""
    state = WalState()
    if not directory.is_dir():
        return state
    paths = sorted(p for p in directory.iterdir() if _NAME.match(p.name))
    for path in paths:
        try:
            size = path.stat().st_size
            if size == 0:  # created, then the process died before the first write
                if repair:
                    path.unlink()
                    log.info("wal_empty_segment_removed", path=str(path))
                continue
            with open(path, "rb") as fh:
                try:
                    first = _read_header(fh, path)
                except WalFormatError as exc:
                    if repair:
                        aside = path.with_name(f"{path.name}.bad-{int(time.time())}")
                        os.replace(path, aside)
                        log.warning("wal_set_aside", path=str(path), reason=str(exc), moved_to=str(aside),
                                    hint="its readings are not replayed; the file is kept for inspection")
                    continue
                seg = Segment(path, first, last_seq=first - 1, size=size)
                for end, kind, body in _records(fh, first):
                    seg.end = end
                    if kind == KIND_READING:
                        seg.last_seq = _READING.unpack_from(body)[1]
                        seg.readings += 1
                    else:
                        state.applied = max(state.applied, _APPLIED.unpack(body)[1])
        except OSError as exc:
            log.warning("wal_unreadable", path=str(path), error=exc.strerror or str(exc))
            continue
        state.segments.append(seg)
        state.readings += seg.readings
        if seg.readings:
            state.last_seq = max(state.last_seq, seg.last_seq)
    if repair:
        for seg in state.segments:
            if seg.end < seg.size:
                _cut_back(seg, newest=seg is state.segments[-1])
    return state


def read(state: WalState, after_seq: int = 0) -> Iterator[RawMessage]:
    """The readings with seq > ``after_seq``, in order, as the network thread had handed them over
    (plus their ``seq``). Streams: one record in memory at a time."""
    for seg in state.segments:
        if seg.readings == 0 or seg.last_seq <= after_seq:
            continue
        with open(seg.path, "rb") as fh:
            _read_header(fh, seg.path)
            for _, kind, body in _records(fh, seg.first_seq, stop_at=seg.end):
                if kind != KIND_READING:
                    continue
                _, seq, received, mid, qos, flags, topic_len = _READING.unpack_from(body)
                if seq <= after_seq:
                    continue
                after_seq = seq  # a seq seen already (a retried commit whose cut-back failed) is not replayed twice
                start = _READING.size
                yield RawMessage(
                    topic=body[start:start + topic_len].decode(errors="replace"),
                    payload=body[start + topic_len:],
                    received=received, qos=qos, mid=mid, dup=bool(flags & FLAG_DUP),
                    retain=bool(flags & FLAG_RETAIN), seq=seq,
                )


def remove_through(state: WalState, seq: int) -> int:
    """Delete the segments whose readings all have seq <= ``seq`` (a snapshot covers them)."""
    removed = 0
    for seg in list(state.segments):
        if seg.last_seq <= seq:
            try:
                seg.path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:  # kept: it is read again (and skipped by seq) at the next start
                log.warning("wal_remove_failed", path=str(seg.path), error=exc.strerror or str(exc))
                continue
            state.segments.remove(seg)
    return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_sync = getattr(os, "fdatasync", os.fsync)  # the file's size is data too; its mtime need not be


class WalWriter:
    """The one writer: group commit, then ack, then hand the readings (with their seq) to the lane.

    ``submit`` runs on the MQTT network thread and only appends to a deque. The writer thread
    waits for the group-commit bound, writes every pending record in one ``write``, syncs once,
    acks each reading to the broker, then delivers them to the sensor lane in order (``deliver``
    may block while the lane's queue is full: acks then stop and the broker's in-flight window
    holds the rest back). Between commits it appends an ``applied`` mark (not synced on its own)
    whenever the lane has moved on, so a replay knows which readings' events already went out.
    """

    def __init__(self, directory: Path, *, state: WalState, next_seq: int, stats: Stats,
                 deliver: Callable[[list[RawMessage]], None], ack: Callable[[RawMessage, int], None],
                 applied: Callable[[], int], max_pending: int, commit_delay_s: float = COMMIT_DELAY_S,
                 batch_max: int = BATCH_MAX) -> None:
        self.directory = directory
        self.stats = stats
        self._deliver = deliver
        self._ack = ack
        self._applied = applied
        self.commit_delay_s = commit_delay_s
        self.batch_max = batch_max
        self.max_pending = max_pending
        self._state = state  # closed segments (those found at start, then rotated ones)
        self._next_seq = next_seq
        self._mark = state.applied
        self._pending: deque[tuple[RawMessage, int]] = deque()
        self._first_at = 0.0
        self._cond = threading.Condition(threading.Lock())
        self._intake_open = True
        self._stopping = False
        self.last_progress = time.monotonic()  # the watchdog checks it (Daemon.lanes_healthy)
        self._checkpoint: int | None = None
        self._fd: int | None = None
        self._segment: Segment | None = None
        self._thread: threading.Thread | None = None
        self._failing = False

    # ------------------------------------------------------------------ network thread
    def submit(self, msg: RawMessage, generation: int) -> bool:
        """Queue a QoS 1 reading; False when refused (stopping, or too many pending): it is then
        not acknowledged, and the broker redelivers it after the next connect."""
        with self._cond:
            if not self._intake_open or len(self._pending) >= self.max_pending:
                self.stats.incr("wal_refused")
                return False
            if not self._pending:
                self._first_at = time.monotonic()
                self._pending.append((msg, generation))
                self._cond.notify()
            else:
                self._pending.append((msg, generation))
                if len(self._pending) == self.batch_max:
                    self._cond.notify()
        return True

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="wal-writer", daemon=True)
        self._thread.start()

    def close_intake(self) -> None:
        with self._cond:
            self._intake_open = False

    def stop(self, timeout: float = 10.0) -> None:
        """Commit, ack and deliver what is pending, then end the thread."""
        with self._cond:
            self._intake_open = False
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def checkpoint(self, seq: int) -> None:
        """A snapshot now covers every reading up to ``seq``: start a new segment and delete
        the old ones it covers (done by the writer thread, or here once it has ended)."""
        if self._thread is not None and self._thread.is_alive():
            with self._cond:
                self._checkpoint = seq if self._checkpoint is None else max(seq, self._checkpoint)
                self._cond.notify()
        else:
            self._rotate(seq)

    def finish(self) -> None:
        """After the lane has stopped: a last synced `applied` mark, then close the segment."""
        if self._thread is not None and self._thread.is_alive():
            return
        try:
            if self._fd is not None and self._applied() > self._mark:  # no segment open: nothing to mark
                self._write(encode_applied(self._applied()), sync=True)
                self._mark = self._applied()
        except OSError as exc:
            log.warning("wal_write_failed", error=exc.strerror or str(exc))
        self._close_segment()

    @property
    def next_seq(self) -> int:
        return self._next_seq

    # ------------------------------------------------------------------ writer thread
    def run(self) -> None:
        """The writer thread. An unexpected error is logged and the round retried: if this thread
        died, nothing would be acknowledged again and intake would stop without a word."""
        while True:
            try:
                if self._round():
                    return
            except Exception as exc:  # noqa: BLE001 - see above
                log.error("wal_writer_error", error=f"{type(exc).__name__}: {exc}",
                          hint="retrying; readings stay unacknowledged until the log takes them")
                with self._cond:
                    self._cond.wait(RETRY_S)

    def _round(self) -> bool:
        """One commit round; True when the writer should stop."""
        self.last_progress = time.monotonic()
        with self._cond:
            while not (self._pending or self._stopping or self._checkpoint is not None):
                idle = not self._cond.wait(MARK_IDLE_S)
                self.last_progress = time.monotonic()  # waiting for readings is not a stall
                if idle and self._applied() > self._mark:
                    break
            if self._pending and not self._stopping:
                deadline = self._first_at + self.commit_delay_s
                while len(self._pending) < self.batch_max and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch = [self._pending.popleft() for _ in range(min(len(self._pending), self.batch_max))]
            if self._pending:
                self._first_at = 0.0  # the rest has waited long enough: next round at once
            checkpoint, self._checkpoint = self._checkpoint, None
            stopping = self._stopping
        if batch:
            seq_before = self._next_seq
            try:
                committed = self._commit(batch, stopping)
            except BaseException:
                if self._next_seq == seq_before:
                    self._requeue(batch)  # not written, not acknowledged: try again
                raise
            if not committed:
                if stopping:
                    return True  # unacked: the broker redelivers them after the next start
                self._requeue(batch)
                with self._cond:
                    self._cond.wait(RETRY_S)
                return False
        elif self._applied() > self._mark:
            self._write_mark()
        if checkpoint is not None:
            self._rotate(checkpoint)
        return stopping and not self._pending

    def _requeue(self, batch: list[tuple[RawMessage, int]]) -> None:
        with self._cond:
            self._pending.extendleft(reversed(batch))
            self._first_at = 0.0

    def _commit(self, batch: list[tuple[RawMessage, int]], stopping: bool) -> bool:
        seq0 = self._next_seq
        parts = []
        mark = self._applied()
        if mark > self._mark:
            parts.append(encode_applied(mark))
        msgs = []
        kept = []
        for msg, generation in batch:
            try:
                parts.append(encode_reading(seq0 + len(msgs), msg))
            except (struct.error, ValueError, OverflowError) as exc:  # cannot be logged: never durable
                log.error("wal_encode_failed", topic=msg.topic, error=str(exc))
                self._ack(msg, generation)  # or the broker would redeliver it for ever
                continue
            msgs.append(replace(msg, seq=seq0 + len(msgs)))
            kept.append((msg, generation))
        batch = kept
        if not batch:
            return True
        data = b"".join(parts)
        try:
            self._write(data, sync=True)
        except OSError as exc:
            self._fail(exc)
            return False
        if self._failing:
            self._failing = False
            log.info("wal_recovered", path=str(self._segment.path) if self._segment else None)
        self._mark = max(self._mark, mark)
        self._next_seq += len(batch)
        seg = self._segment
        seg.last_seq, seg.readings = self._next_seq - 1, seg.readings + len(batch)
        self.stats.incr("wal_records", len(batch))
        self.stats.incr("wal_fsyncs")
        self.stats.incr("wal_bytes", len(data))
        for msg, generation in batch:
            self._ack(msg, generation)
        self._deliver(msgs)
        return True

    def _write_mark(self) -> None:
        mark = self._applied()
        try:
            self._write(encode_applied(mark), sync=False)  # a crash keeps the page cache; a power cut may lose it
            self._mark = mark
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        if not self._failing:
            log.error("wal_write_failed", path=str(self._segment.path) if self._segment else str(self.directory),
                      error=exc.strerror or str(exc),
                      hint="readings are not acknowledged until the WAL can be written (disk full or failing?); "
                           f"retrying every {RETRY_S:g} s")
        self._failing = True
        # After a failed write or fsync the file's state is unknown: cut it back to the last
        # commit and continue in a fresh segment.
        if self._fd is not None and self._segment is not None:
            try:
                os.ftruncate(self._fd, self._segment.end)
            except OSError:
                pass
        self._close_segment()

    def _write(self, data: bytes, sync: bool) -> None:
        if self._fd is None:
            self._open_segment()
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if sync:
            _sync(self._fd)
        self._segment.end += len(data)

    def _open_segment(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / segment_name(self._next_seq)
        # A segment that holds no readings (only marks) may already have this name: it is
        # replaced, so forget it, and carry the current mark over into the new one.
        self._state.segments = [s for s in self._state.segments if s.path != path]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o640)
        try:
            start = encode_header(self._next_seq) + (encode_applied(self._mark) if self._mark else b"")
            os.write(fd, start)
            _sync(fd)
            _fsync_dir(self.directory)  # the new name must survive a power cut too
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._segment = Segment(path, self._next_seq, end=len(start), last_seq=self._next_seq - 1)

    def _close_segment(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        if self._segment is not None and self._segment.readings:
            self._state.segments.append(self._segment)  # deleted once a snapshot covers it
        self._segment = None

    def _rotate(self, covered: int) -> None:
        if self._segment is not None and self._segment.readings:
            self._close_segment()  # a segment of marks only stays open: nothing to delete there
        removed = remove_through(self._state, covered)
        if removed:
            log.debug("wal_checkpoint", covered_seq=covered, segments_removed=removed)
