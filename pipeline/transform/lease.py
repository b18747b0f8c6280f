"""A lease so two transforms never consume the same ingestion batch at once.

Created atomically with `Lake.create_json` (S3 `If-None-Match: *` or a local hard link).
An expired lease (a crashed holder) is taken over through a second create-if-absent
keyed by the stale lease's token, so two runs cannot both take over the same stale lease.
The holder re-checks the lease right before committing (`assert_held`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator

from pipeline import layout
from pipeline.errors import CorruptBatchError, TransformBusyError
from pipeline.lake import Lake

LEASE_KEY = layout.TRANSFORM_LEASE
LEASE_SECONDS = 15 * 60  # the longest a Lambda can run


class Lease:
    def __init__(self, lake: Lake, run_id: str, seconds: int = LEASE_SECONDS) -> None:
        self.lake, self.run_id, self.seconds = lake, run_id, seconds
        self.token = uuid.uuid4().hex

    def _record(self) -> dict[str, str]:
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.seconds)
        return {"run_id": self.run_id, "token": self.token, "expires_at": expires.isoformat()}

    def acquire(self) -> None:
        if self.lake.create_json(LEASE_KEY, self._record()):
            return
        held = self._read()
        if held is None:  # released between our create and read: try once more
            if self.lake.create_json(LEASE_KEY, self._record()):
                return
            held = self._read() or {}
        expires = dt.datetime.fromisoformat(held.get("expires_at", "1970-01-01T00:00:00+00:00"))
        if expires > dt.datetime.now(dt.UTC):
            raise TransformBusyError(held.get("run_id", "?"), held.get("expires_at", "?"))
        takeover = layout.lease_takeover(held.get("token", "none"))
        if not self.lake.create_json(takeover, {"run_id": self.run_id, "token": self.token}):
            raise TransformBusyError(held.get("run_id", "?"), "being taken over")
        self.lake.write_json(LEASE_KEY, self._record())

    def assert_held(self) -> None:
        held = self._read()
        if not held or held.get("token") != self.token:
            raise TransformBusyError(
                (held or {}).get("run_id", "?"), "our lease expired and was taken over"
            )

    def release(self) -> None:
        held = self._read()
        if held and held.get("token") == self.token:
            self.lake.delete(LEASE_KEY)

    def _read(self) -> dict[str, str] | None:
        try:
            held: dict[str, str] = self.lake.read_json(LEASE_KEY)
            return held
        except CorruptBatchError:  # absent (or deleted while we looked)
            return None


@contextlib.contextmanager
def leased(lake: Lake, run_id: str) -> Iterator[Lease]:
    lease = Lease(lake, run_id)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()
