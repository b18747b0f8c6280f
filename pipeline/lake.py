"""One data-lake interface over S3 (`s3://bucket/prefix`) and local folders (path or `file://`).

File I/O goes through `pyarrow.fs`, so Parquet readers and writers stream straight to
either backend. Small objects (JSON records, log entries) on S3 go through one boto3
client instead: one request each, where pyarrow's filesystem adds a HEAD before every
read. The one thing `pyarrow.fs` cannot do is an atomic create-if-absent, which
watermarks and manifests need to stay correct under concurrent runs: that single
operation uses S3's conditional `PutObject` (`If-None-Match: *`) or a local hard link.

Every I/O error leaves this module typed (`lake_error`), naming the key and what to do:
`LakeUnavailableError` (transient: S3 throttling, a 5xx, a timeout, a reset connection;
the state machine retries it), `LakeStorageError` (permanent: permission denied, a
read-only or full file system, a path under a file, a name too long, a missing bucket) or
`CorruptBatchError` (a file that is missing, truncated or unreadable). A write that fails
removes what it had written so far (its temporary file, or the partial Parquet file).
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import errno
import functools
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import (
    ConfigurationError,
    CorruptBatchError,
    LakeStorageError,
    LakeUnavailableError,
    PipelineError,
)

PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": 3}

# -- classifying I/O errors ----------------------------------------------------------------
_TRANSIENT_ERRNOS = {
    errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EAGAIN, errno.EINTR,
}  # fmt: skip
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
_PATH_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST}
# pyarrow's S3 client: "AWS Error <TYPE> during <Operation> operation: ..." and, when S3
# sent no error body, "AWS Error UNKNOWN (HTTP status <n>)".
_AWS_ERROR = re.compile(r"AWS Error (\w+)(?: \(HTTP status (\d+)\))?")
_AWS_TRANSIENT = {
    "SLOW_DOWN", "THROTTLING", "INTERNAL_FAILURE", "SERVICE_UNAVAILABLE", "NETWORK_CONNECTION",
    "REQUEST_TIMEOUT", "REQUEST_TIME_TOO_SKEWED", "UNKNOWN_SERVER_ERROR",
}  # fmt: skip
_S3_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "RequestTimeout",
    "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
}  # fmt: skip
_S3_DENIED_CODES = {
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "NoSuchBucket",
    "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AccountProblem",
}  # fmt: skip


def _kind(exc: BaseException) -> str:
    """transient | full | denied | path | missing | corrupt | other."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _S3_TRANSIENT_CODES or status >= 500 or status == 429:
            return "transient"
        return "denied" if code in _S3_DENIED_CODES or status == 403 else "other"
    if isinstance(exc, BotoCoreError):  # no answer at all: endpoint, timeout, reset
        return "transient"
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, OSError) and exc.errno is not None:
        for kind, numbers in (
            ("transient", _TRANSIENT_ERRNOS),
            ("full", _FULL_ERRNOS),
            ("denied", _DENIED_ERRNOS),
            ("path", _PATH_ERRNOS),
        ):
            if exc.errno in numbers:
                return kind
        return "other"
    text = str(exc)
    if match := _AWS_ERROR.search(text):
        name, status = match.group(1), int(match.group(2) or 0)
        if name in _AWS_TRANSIENT or status >= 500 or status == 429:
            return "transient"
        if name in {"RESOURCE_NOT_FOUND", "NO_SUCH_KEY"} or status == 404:
            return "missing"
        return "denied" if name in {"ACCESS_DENIED", "NO_SUCH_BUCKET"} or status == 403 else "other"
    if "curlCode" in text or "Connection reset" in text or "timed out" in text.lower():
        return "transient"
    if "No space left" in text:
        return "full"
    if "Permission denied" in text or "Read-only file system" in text:
        return "denied"
    if isinstance(exc, pa.ArrowInvalid) or "Parquet" in text or "thrift" in text:
        return "corrupt"
    return "other"


def lake_error(exc: BaseException, uri: str, doing: str, fix: str | None = None) -> PipelineError:
    """`exc`, raised while `doing` ("reading", "writing", "listing", ...) `uri`, as a typed
    error that names the key and says what to do; `fix` is the remedy for a corrupt file."""
    if isinstance(exc, PipelineError):
        return exc
    detail = " ".join(str(exc).split()) or type(exc).__name__
    kind = _kind(exc)
    if kind == "other":
        kind = "corrupt" if doing == "reading" else "denied"
    what = f"lake {doing} {uri} failed"
    if kind == "transient":
        return LakeUnavailableError(
            f"{what}: the storage did not answer ({detail}); transient (throttling, a 5xx, "
            "a timeout or the network): retry the step"
        )
    if kind == "full":
        return LakeStorageError(
            f"{what}: the file system is full ({detail}); free space or point the lake "
            "elsewhere, then re-run the step (nothing it wrote was committed)"
        )
    if kind == "path":
        return LakeStorageError(
            f"{what}: the path is not usable ({detail}); check the lake URL (a folder under "
            "a file, or a name too long)"
        )
    if kind in {"missing", "corrupt"}:
        state = "does not exist" if kind == "missing" else "is truncated or corrupt"
        return CorruptBatchError(
            f"lake file {uri} {state} ({detail}). {fix or 'Re-run the step that wrote it.'}"
        )
    return LakeStorageError(
        f"{what}: access refused ({detail}); give this process read and write access to "
        "the lake (a read-only file system, a permission, a bucket policy or a missing bucket)"
    )


_LAKE_ERRORS: tuple[type[BaseException], ...] = (OSError, pa.ArrowException)


def _client_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (*_LAKE_ERRORS, ClientError, BotoCoreError)


@dataclass
class Lake:
    """A lake zone rooted at `url`. Keys are `/`-separated paths relative to the root.

    `endpoint` and `region` matter for S3 only (`Settings.s3_endpoint`, `aws_region`:
    pyarrow's S3 client does not read the AWS SDK's endpoint variables itself).
    """

    url: str
    endpoint: str | None = None
    region: str | None = None
    fs: pafs.FileSystem = field(init=False, repr=False)
    root: str = field(init=False)
    bucket: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        url = self.url.rstrip("/")
        if url.startswith("s3://"):
            bucket, _, prefix = url[5:].partition("/")
            if not bucket:
                raise ConfigurationError(f"lake URL {self.url!r} names no bucket")
            endpoint = self.endpoint
            self.fs = pafs.S3FileSystem(
                endpoint_override=endpoint,
                region=self.region,
                scheme="http" if endpoint and endpoint.startswith("http://") else "https",
                allow_bucket_creation=False,
            )
            self.bucket = bucket
            self.root = f"{bucket}/{prefix}".rstrip("/")
        elif "://" in url and not url.startswith("file://"):
            raise ConfigurationError(
                f"unsupported lake URL {self.url!r}: use s3://bucket/prefix, file:///path or a path"
            )
        else:
            path = Path(url.removeprefix("file://")).expanduser().resolve()
            self.fs = pafs.LocalFileSystem()
            self.root = path.as_posix()
            with self._io("", "creating the folder of"):
                path.mkdir(parents=True, exist_ok=True)

    # -- paths -----------------------------------------------------------------------
    def path(self, key: str) -> str:
        """The backend path of `key` (what pyarrow readers take together with `fs`)."""
        return f"{self.root}/{key.lstrip('/')}"

    def uri(self, key: str) -> str:
        return f"s3://{self.path(key)}" if self.bucket else self.path(key)

    @property
    def is_local(self) -> bool:
        return self.bucket is None

    @contextlib.contextmanager
    def _io(self, key: str, doing: str, fix: str | None = None) -> Iterator[None]:
        """Raise any I/O error of the block as a typed error naming `key` (`lake_error`)."""
        try:
            yield
        except PipelineError:
            raise
        except _client_errors() as exc:
            raise lake_error(exc, self.uri(key), doing, fix) from exc

    def _makedirs(self, key: str) -> None:
        if self.is_local:
            with self._io(key, "creating the folder of"):
                Path(self.path(key)).parent.mkdir(parents=True, exist_ok=True)

    def _discard(self, key: str) -> None:
        """Best effort after a failed write: what is left is unlisted, so readers ignore it."""
        with contextlib.suppress(Exception):
            self.fs.delete_file(self.path(key))

    def _object_key(self, key: str) -> str:
        return self.path(key).split("/", 1)[1]

    @functools.cached_property
    def _s3(self) -> Any:
        """One boto3 client per lake (thread-safe; building one costs ~20 ms of CPU).

        Small JSON objects go through it: one request per read, write or conditional
        create, where pyarrow's filesystem adds a HEAD before every read.
        """
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region)

    # -- bytes and JSON --------------------------------------------------------------
    def exists(self, key: str) -> bool:
        with self._io(key, "checking"):
            return bool(self.fs.get_file_info(self.path(key)).type == pafs.FileType.File)

    def read_bytes(self, key: str) -> bytes:
        data = self.read_bytes_or_none(key)
        if data is None:
            raise CorruptBatchError(
                f"lake file {self.uri(key)} does not exist. Re-run the step that wrote it."
            )
        return data

    def read_bytes_or_none(self, key: str) -> bytes | None:
        """The object's bytes, or None if it does not exist (one request on S3)."""
        with self._io(key, "reading"):
            if self.is_local:
                try:
                    return Path(self.path(key)).read_bytes()
                except (FileNotFoundError, NotADirectoryError):
                    return None
            try:
                response = self._s3.get_object(Bucket=self.bucket, Key=self._object_key(key))
            except self._s3.exceptions.NoSuchKey:
                return None
            body: bytes = response["Body"].read()
            return body

    def _local_tmp(self, key: str, data: bytes) -> Path:
        """`data` in a temporary file next to `key` (removed again if the write fails)."""
        target = Path(self.path(key))
        self._makedirs(key)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with self._io(key, "writing"):
                tmp.write_bytes(data)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Write (or replace) `key` atomically: readers see the old or the new bytes.

        `content_type` is stored with an S3 object (what a browser is told it is)."""
        if self.is_local:
            tmp = self._local_tmp(key, data)
            try:
                with self._io(key, "writing"):
                    tmp.replace(self.path(key))
            finally:
                tmp.unlink(missing_ok=True)
        else:
            extra = {"ContentType": content_type} if content_type else {}
            with self._io(key, "writing"):
                self._s3.put_object(
                    Bucket=self.bucket, Key=self._object_key(key), Body=data, **extra
                )

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Create `key` only if it does not exist yet. True if this call created it."""
        if self.is_local:
            tmp = self._local_tmp(key, data)
            try:
                with self._io(key, "creating"):
                    try:
                        os.link(tmp, self.path(key))
                    except FileExistsError:
                        return False
                return True
            finally:
                tmp.unlink(missing_ok=True)
        from botocore.exceptions import ClientError

        assert self.bucket is not None  # not local, so an S3 lake
        with self._io(key, "creating"):
            try:
                self._s3.put_object(
                    Bucket=self.bucket, Key=self._object_key(key), Body=data, IfNoneMatch="*"
                )
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in {
                    "PreconditionFailed",
                    "ConditionalRequestConflict",
                }:
                    return False
                raise

    def read_json(self, key: str) -> Any:
        return self._parse_json(key, self.read_bytes(key))

    def read_json_or_none(self, key: str) -> Any:
        """The parsed object, or None if it does not exist (one request on S3)."""
        data = self.read_bytes_or_none(key)
        return None if data is None else self._parse_json(key, data)

    def _parse_json(self, key: str, data: bytes) -> Any:
        try:
            return json.loads(data)
        except json.JSONDecodeError as exc:
            raise CorruptBatchError(f"lake file {self.uri(key)} is not valid JSON: {exc}") from None

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, _json_bytes(obj))

    def create_json(self, key: str, obj: Any) -> bool:
        return self.create_bytes(key, _json_bytes(obj))

    def delete(self, key: str) -> None:
        with self._io(key, "deleting"):
            if self.is_local:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.delete_file(self.path(key))
            else:  # (one request; an absent key is not an error on S3)
                self._s3.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete the keys (absent ones are fine): 1,000 per request on S3. How many were asked."""
        keys = list(keys)
        if self.is_local:
            for key in keys:
                self.delete(key)
            return len(keys)
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": self._object_key(k)} for k in keys[start : start + 1000]]
            with self._io(keys[start], "deleting"):
                response = self._s3.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True}
                )
            if errors := response.get("Errors"):
                first = errors[0]
                raise LakeStorageError(
                    f"lake deleting {len(errors)} objects failed, e.g. "
                    f"{self.uri(str(first.get('Key')))}: {first.get('Code')} "
                    f"{first.get('Message')}; check this process's delete permission"
                )
        return len(keys)

    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (recursive, sorted), relative to the lake root."""
        return [key for key, _ in self.list_with_times(prefix)]

    def list_with_times(self, prefix: str = "") -> builtins.list[tuple[str, dt.datetime]]:
        """(key, last modified, UTC) under `prefix`, sorted by key: for age-based housekeeping."""
        base = self.path(prefix).rstrip("/")
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        start = len(self.root) + 1
        with self._io(prefix, "listing"):
            infos = self.fs.get_file_info(selector)
        found: builtins.list[tuple[str, dt.datetime]] = []
        for info in infos:
            if info.type != pafs.FileType.File or info.base_name.startswith("."):
                continue
            mtime = info.mtime or dt.datetime.now(dt.UTC)
            aware = mtime if mtime.tzinfo else mtime.replace(tzinfo=dt.UTC)
            found.append((info.path[start:], aware))
        return sorted(found)

    # -- Parquet ---------------------------------------------------------------------
    @contextlib.contextmanager
    def parquet_writer(
        self, key: str, schema: pa.Schema, **options: Any
    ) -> Iterator[pq.ParquetWriter]:
        """Stream record batches into one Parquet file (zstd unless told otherwise); if
        anything fails on the way, the partial file is removed."""
        self._makedirs(key)
        opts = {**PARQUET_OPTIONS, **options}
        try:
            with (
                self._io(key, "writing"),
                pq.ParquetWriter(self.path(key), schema, filesystem=self.fs, **opts) as writer,
            ):
                yield writer
        except BaseException:
            self._discard(key)
            raise

    def write_parquet(self, key: str, table: pa.Table, **options: Any) -> None:
        self._makedirs(key)
        try:
            with self._io(key, "writing"):
                pq.write_table(
                    table, self.path(key), filesystem=self.fs, **{**PARQUET_OPTIONS, **options}
                )
        except BaseException:
            self._discard(key)
            raise

    def read_parquet(self, keys: Sequence[str], schema: pa.Schema | None = None) -> pa.Table:
        """Read the listed files into one table; a missing or broken file is a typed error."""
        tables = []
        for key in keys:
            # ParquetFile, not pq.read_table: the latter imports pyarrow.dataset (and
            # pandas when installed), over a second of every cold start.
            with self._io(key, "reading"), self.fs.open_input_file(self.path(key)) as f:
                table = pq.ParquetFile(f).read()
                tables.append(table if schema is None else table.cast(schema))
        if not tables:
            if schema is None:
                raise ValueError("read_parquet of no files needs a schema")
            return empty_table(schema)
        return pa.concat_tables(tables, promote_options="default")


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table of no rows: `pa.Schema.empty_table()` imports pandas (0.2 s per process)."""
    return pa.Table.from_batches([], schema=schema)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, default=str).encode()
