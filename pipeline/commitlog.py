"""Append-only logs in a lake zone: entries numbered 1, 2, 3, ... without gaps.

Why: finding what is new must cost what is new, not what was ever written. A reader keeps
the number of the last entry it handled and reads forward until a number is missing; no
prefix is ever listed, so on S3 a reader with nothing new makes two requests whatever the
history.

Writing: an entry is created with the lake's create-if-absent (`Lake.create_json`, S3
`If-None-Match: *`) at the next free number, so concurrent writers never overwrite each
other and the numbers stay dense: a writer tries number n only after finding n - 1 taken.
`head.json` is a hint of the newest number, rewritten after each append so writers start
near the end; it may lag (a writer stopped before rewriting it, or two writers raced),
which costs a writer a failed create, never correctness.

Compaction: once a log is two segments (`SEGMENT` entries each) past a full segment, the
writer that opens the next segment copies that one into a single JSON-lines object and
deletes its entry objects, so a year of entries is a few hundred objects. Readers look in
the segment when an entry object is missing. (A writer with a hint a whole segment behind
could re-create a compacted number; the hint never lags by more than the writers running
at once, far fewer than `SEGMENT`.)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pipeline import layout
from pipeline.errors import CorruptBatchError, TransientError
from pipeline.lake import Lake

log = logging.getLogger(__name__)

SEGMENT = 1024  # entries per compacted segment
MAX_PROBES = 10_000  # failed creates before a writer gives up (only a racing crowd does that)
READ_THREADS = 8  # entries are small: S3 reads are latency-bound

Entry = dict[str, Any]


class LogContentionError(TransientError):
    """Other writers kept taking the next number of a log; retry."""


@dataclass
class CommitLog:
    """One log (`name`) in one lake zone. Not thread-safe for reading (a segment cache)."""

    lake: Lake
    name: str
    _segments: dict[int, dict[int, Entry] | None] = field(default_factory=dict, repr=False)

    # -- reading ----------------------------------------------------------------------
    def head(self) -> int:
        """The hint of the newest number (0 for an empty log): every number up to it exists."""
        hint = self.lake.read_json_or_none(layout.log_head(self.name))
        return int(hint["seq"]) if hint else 0

    def get(self, seq: int, head: int | None = None) -> Entry | None:
        """Entry `seq`, or None if the log has no such entry (yet). With the `head` known,
        a number past it is not looked for in a segment (none can be compacted yet)."""
        if seq < 1:
            return None
        entry = self.lake.read_json_or_none(layout.log_entry(self.name, seq))
        if entry is None and (head is None or _maybe_compacted(seq, head)):
            entry = self._from_segment(seq)
        return entry if entry is None else dict(entry)

    def read_after(self, after: int, limit: int | None = None) -> list[Entry]:
        """The entries after number `after`, in order, at most `limit`: up to the first
        missing number (entries up to the hint are fetched in parallel on S3)."""
        wanted = limit if limit is not None else float("inf")
        out: list[Entry] = []
        head = self.head()
        known = min(head, after + int(min(wanted, 10**9)))
        if known > after:
            out.extend(self._fetch(range(after + 1, known + 1), head))
            if len(out) < known - after:  # a missing entry below the hint: the log is damaged
                missing = after + len(out) + 1
                raise CorruptBatchError(
                    f"lake {self.lake.uri(layout.log_entry(self.name, missing))} is missing "
                    f"although the log's head is at {known}: restore it from the bucket's "
                    "versions (entries are never deleted, only compacted into segments)"
                )
        seq = after + len(out) + 1
        while len(out) < wanted:  # past the hint: probe one by one
            entry = self.get(seq, head)
            if entry is None:
                break
            out.append(entry)
            seq += 1
        return out

    def read_before(self, before: int, limit: int) -> list[Entry]:
        """At most `limit` entries numbered below `before`, newest first, down to the first
        missing one (history pages: the oldest entries may have expired)."""
        return self._fetch(range(before - 1, max(0, before - 1 - limit), -1), self.head())

    def _fetch(self, seqs: range, head: int | None = None) -> list[Entry]:
        """Entries of the numbers in `seqs`, in that order, up to the first missing one.

        Numbers in segments that are compacted by now (two behind the `head`) are read from
        the segment objects: one request per 1,024 entries instead of a miss each.
        """
        early = {
            s: e
            for s in seqs
            if head and _compacted_by_now(s, head) and (e := self._from_segment(s)) is not None
        }
        keys = [layout.log_entry(self.name, s) for s in seqs if s not in early]
        if len(keys) > 1 and not self.lake.is_local:
            with ThreadPoolExecutor(min(len(keys), READ_THREADS)) as pool:
                raw = iter(list(pool.map(self.lake.read_json_or_none, keys)))
        else:
            raw = iter([self.lake.read_json_or_none(k) for k in keys])
        out = []
        for seq in seqs:
            found = early[seq] if seq in early else next(raw)
            if found is None and (head is None or _maybe_compacted(seq, head)):
                found = self._from_segment(seq)
            if found is None:
                break
            out.append(dict(found))
        return out

    def _from_segment(self, seq: int) -> Entry | None:
        segment = seq // SEGMENT
        if segment not in self._segments:
            data = self.lake.read_bytes_or_none(layout.log_segment(self.name, segment))
            self._segments[segment] = (
                None
                if data is None
                else {int(e["seq"]): e for e in map(json.loads, data.splitlines()) if e}
            )
        entries = self._segments[segment]
        return None if entries is None else entries.get(seq)

    # -- writing ----------------------------------------------------------------------
    def append(self, entry: Entry) -> Entry:
        """Add `entry` at the next free number; returns it with `seq` and `logged_at` set."""
        seq = self.head() + 1
        for _ in range(MAX_PROBES):
            numbered = {**entry, "seq": seq, "logged_at": _now()}
            if self.lake.create_json(layout.log_entry(self.name, seq), numbered):
                self._after_append(seq)
                return numbered
            seq += 1
        raise LogContentionError(
            f"log {self.lake.uri(layout.log_head(self.name))}: {MAX_PROBES} numbers were "
            "taken by other writers in a row; retry"
        )

    def create(self, seq: int, entry: Entry) -> bool:
        """Add `entry` at exactly number `seq` (a single writer that knows its number, or a
        repair): False if that number exists already."""
        numbered = {**entry, "seq": seq, "logged_at": _now()}
        created = self.lake.create_json(layout.log_entry(self.name, seq), numbered)
        if created:
            self._after_append(seq)
        return created

    def _after_append(self, seq: int) -> None:
        if self.head() < seq:  # (a writer that lost a race does not move the hint back)
            self.lake.write_json(layout.log_head(self.name), {"seq": seq})
        if seq % SEGMENT == 0 and seq >= 2 * SEGMENT:  # the first entry of a new segment
            self.compact(seq // SEGMENT - 2)

    def compact(self, segment: int) -> None:
        """Copy a full segment's entries into one object, then delete them (idempotent:
        a crash in between leaves entries that are both in the segment and on their own)."""
        seqs = range(max(1, segment * SEGMENT), (segment + 1) * SEGMENT)
        key = layout.log_segment(self.name, segment)
        if not self.lake.exists(key):
            entries = self._fetch(seqs)
            if len(entries) < len(seqs):
                log.warning("log segment %s is incomplete: not compacted", key)
                return
            body = "".join(json.dumps(e, sort_keys=True, default=str) + "\n" for e in entries)
            self.lake.create_bytes(key, body.encode())
        self.lake.delete_many(layout.log_entry(self.name, s) for s in seqs)
        self._segments.pop(segment, None)

    def entries(self, after: int = 0, chunk: int = 256) -> Iterator[Entry]:
        """Every entry after `after`, in order (for migrations and tools, not per-run paths)."""
        while batch := self.read_after(after, chunk):
            yield from batch
            after = int(batch[-1]["seq"])


def _compacted_by_now(seq: int, head: int) -> bool:
    """Whether entry `seq` is in a segment compacted once the log reached `head`."""
    return seq < (head // SEGMENT - 1) * SEGMENT


def _maybe_compacted(seq: int, head: int) -> bool:
    """Whether entry `seq` can be in a compacted segment: not if it is in the segment of
    `head` or later (compaction stays two segments behind; one is slack for a lagging head)."""
    return seq // SEGMENT < head // SEGMENT


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
