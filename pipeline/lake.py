"""One data-lake interface over S3 (`s3://bucket/prefix`) and local folders (path or `file://`).

File I/O goes through `pyarrow.fs`, so Parquet readers and writers stream straight to
either backend. The one thing `pyarrow.fs` cannot do is an atomic create-if-absent, which
watermarks and manifests need to stay correct under concurrent runs: that single
operation uses S3's conditional `PutObject` (`If-None-Match: *`) or a local hard link.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import ConfigurationError, CorruptBatchError

PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": 3}


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
            path.mkdir(parents=True, exist_ok=True)
            self.fs = pafs.LocalFileSystem()
            self.root = path.as_posix()

    # -- paths -----------------------------------------------------------------------
    def path(self, key: str) -> str:
        """The backend path of `key` (what pyarrow readers take together with `fs`)."""
        return f"{self.root}/{key.lstrip('/')}"

    def uri(self, key: str) -> str:
        return f"s3://{self.path(key)}" if self.bucket else self.path(key)

    @property
    def is_local(self) -> bool:
        return self.bucket is None

    def _makedirs(self, key: str) -> None:
        if self.is_local:
            Path(self.path(key)).parent.mkdir(parents=True, exist_ok=True)

    # -- bytes and JSON --------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return bool(self.fs.get_file_info(self.path(key)).type == pafs.FileType.File)

    def read_bytes(self, key: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(key)) as f:
                data: bytes = f.read()
                return data
        except FileNotFoundError:
            raise CorruptBatchError(f"lake file {self.uri(key)} does not exist") from None

    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Write (or replace) `key` atomically: readers see the old or the new bytes.

        `content_type` is stored with an S3 object (what a browser is told it is)."""
        if self.is_local:
            target = Path(self.path(key))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        else:
            metadata = {"Content-Type": content_type} if content_type else None
            with self.fs.open_output_stream(self.path(key), metadata=metadata) as f:
                f.write(data)

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Create `key` only if it does not exist yet. True if this call created it."""
        if self.is_local:
            target = Path(self.path(key))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            try:
                os.link(tmp, target)
                return True
            except FileExistsError:
                return False
            finally:
                tmp.unlink()
        import boto3
        from botocore.exceptions import ClientError

        object_key = self.path(key).split("/", 1)[1]
        assert self.bucket is not None  # not local, so an S3 lake
        try:
            boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region).put_object(
                Bucket=self.bucket, Key=object_key, Body=data, IfNoneMatch="*"
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
        try:
            return json.loads(self.read_bytes(key))
        except json.JSONDecodeError as exc:
            raise CorruptBatchError(f"lake file {self.uri(key)} is not valid JSON: {exc}") from None

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, _json_bytes(obj))

    def create_json(self, key: str, obj: Any) -> bool:
        return self.create_bytes(key, _json_bytes(obj))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(key))

    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (recursive, sorted), relative to the lake root."""
        base = self.path(prefix).rstrip("/")
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        start = len(self.root) + 1
        return sorted(
            info.path[start:]
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and not info.base_name.startswith(".")
        )

    # -- Parquet ---------------------------------------------------------------------
    @contextlib.contextmanager
    def parquet_writer(
        self, key: str, schema: pa.Schema, **options: Any
    ) -> Iterator[pq.ParquetWriter]:
        """Stream record batches into one Parquet file (zstd unless told otherwise)."""
        self._makedirs(key)
        opts = {**PARQUET_OPTIONS, **options}
        with pq.ParquetWriter(self.path(key), schema, filesystem=self.fs, **opts) as writer:
            yield writer

    def write_parquet(self, key: str, table: pa.Table, **options: Any) -> None:
        self._makedirs(key)
        pq.write_table(table, self.path(key), filesystem=self.fs, **{**PARQUET_OPTIONS, **options})

    def read_parquet(self, keys: Sequence[str], schema: pa.Schema | None = None) -> pa.Table:
        """Read the listed files into one table; a missing or broken file is a typed error."""
        tables = []
        for key in keys:
            try:
                # ParquetFile, not pq.read_table: the latter imports pyarrow.dataset (and
                # pandas when installed), over a second of every cold start.
                with self.fs.open_input_file(self.path(key)) as f:
                    table = pq.ParquetFile(f).read()
                tables.append(table if schema is None else table.cast(schema))
            except (FileNotFoundError, OSError, pa.ArrowInvalid) as exc:
                raise CorruptBatchError(
                    f"cannot read lake file {self.uri(key)}: {exc}. Re-run the step that wrote it."
                ) from exc
        if not tables:
            if schema is None:
                raise ValueError("read_parquet of no files needs a schema")
            return schema.empty_table()
        return pa.concat_tables(tables, promote_options="default")


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, default=str).encode()
