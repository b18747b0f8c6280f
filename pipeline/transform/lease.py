"""A lease so two transforms never consume the same ingestion batch at once.

Created atomically with `Lake.create_json` (S3 `If-None-Match: *` or a local hard link).
The lease is short (`Settings.transform_lease_seconds`, default 60 s) and a heartbeat
thread renews it every quarter of that while the transform works, so a holder that dies
(SIGKILL, a Lambda timeout, a lost host) frees the processed zone within one lease period
instead of blocking every run until a long expiry. An expired lease is taken over through
a second create-if-absent keyed by the stale lease's token, so two runs cannot both take
over the same stale lease. The holder re-checks the lease right before committing
(`assert_held`): a holder whose renewals stalled long enough to be taken over stops there.

`clear` removes a stale lease by hand (`totesys-etl clear-lease`, docs/OPERATIONS.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from pipeline import layout
from pipeline.errors import CorruptBatchError, TransformBusyError
from pipeline.lake import Lake

log = logging.getLogger(__name__)

LEASE_KEY = layout.TRANSFORM_LEASE
LEASE_SECONDS = 60  # default; a heartbeat renews it every LEASE_SECONDS / 4 while working


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _expires(held: dict[str, Any]) -> dt.datetime:
    text = held.get("expires_at") or "1970-01-01T00:00:00+00:00"
    try:
        return dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):  # a damaged record: treat it as expired
        return dt.datetime.fromtimestamp(0, dt.UTC)


def read_lease(lake: Lake) -> dict[str, Any] | None:
    """The lease record, or None when no transform holds the zone (a damaged record reads
    as an expired lease, so it can be taken over)."""
    try:
        held: dict[str, Any] = lake.read_json(LEASE_KEY)
    except CorruptBatchError:
        return {"run_id": "?", "token": "damaged"} if lake.exists(LEASE_KEY) else None
    return held if isinstance(held, dict) else {"run_id": "?", "token": "damaged"}


def lease_expiry(lake: Lake) -> dt.datetime | None:
    """When the current lease expires unless renewed (None: the zone is free)."""
    held = read_lease(lake)
    return None if held is None else _expires(held)


class Lease:
    def __init__(self, lake: Lake, run_id: str, seconds: int = LEASE_SECONDS) -> None:
        self.lake, self.run_id, self.seconds = lake, run_id, seconds
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _record(self) -> dict[str, str]:
        expires = _now() + dt.timedelta(seconds=self.seconds)
        return {"run_id": self.run_id, "token": self.token, "expires_at": expires.isoformat()}

    def acquire(self) -> None:
        if not self.lake.create_json(LEASE_KEY, self._record()):
            self._take_over()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"lease-{self.run_id}", daemon=True
        )
        self._heartbeat.start()

    def _take_over(self) -> None:
        held = read_lease(self.lake)
        if held is None:  # released between our create and read: try once more
            if self.lake.create_json(LEASE_KEY, self._record()):
                return
            held = read_lease(self.lake) or {}
        if _expires(held) > _now():
            raise TransformBusyError(held.get("run_id", "?"), held.get("expires_at", "?"))
        takeover = layout.lease_takeover(str(held.get("token", "none")))
        if not self.lake.create_json(takeover, {"run_id": self.run_id, "token": self.token}):
            raise TransformBusyError(held.get("run_id", "?"), "being taken over")
        log.warning(
            "took over an expired transform lease",
            extra={"run_id": self.run_id, "holder": held.get("run_id"), "expired": _expires(held)},
        )
        self.lake.write_json(LEASE_KEY, self._record())

    def _beat(self) -> None:
        """Renew the lease every quarter period until released or lost to a taker."""
        while not self._stop.wait(self.seconds / 4):
            try:
                held = read_lease(self.lake)
                if not held or held.get("token") != self.token:
                    self._lost.set()
                    return
                self.lake.write_json(LEASE_KEY, self._record())
            except Exception:  # a transient lake error: the next beat tries again
                log.warning("transform lease renewal failed", exc_info=True)

    def assert_held(self) -> None:
        held = read_lease(self.lake)
        if self._lost.is_set() or not held or held.get("token") != self.token:
            raise TransformBusyError(
                (held or {}).get("run_id", "?"), "our lease expired and was taken over"
            )

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        held = read_lease(self.lake)
        if held and held.get("token") == self.token:
            self.lake.delete(LEASE_KEY)


@contextlib.contextmanager
def leased(lake: Lake, run_id: str, seconds: int = LEASE_SECONDS) -> Iterator[Lease]:
    lease = Lease(lake, run_id, seconds)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()


def clear(lake: Lake, *, force: bool = False) -> dict[str, Any]:
    """Remove the processed zone's lease if it has expired (a dead holder), or in any case
    with `force` (a live holder then fails at its commit check and is retried)."""
    held = read_lease(lake)
    if held is None:
        return {"status": "free"}
    expired = _expires(held) <= _now()
    if not (expired or force):
        return {
            "status": "held",
            "run_id": held.get("run_id"),
            "expires_at": held.get("expires_at"),
        }
    lake.delete(LEASE_KEY)
    return {"status": "cleared", "run_id": held.get("run_id"), "expired": expired}
