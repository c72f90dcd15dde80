"""S3 access for every stage: one small wrapper over a boto3 S3 client.

The client is made by the caller: in Airflow from the S3 connection (plugins/retrain_airflow),
in the CLI and the trainer container from the standard AWS_* environment variables
(`client_from_env`). The same code path talks to AWS S3, MinIO and the moto server used in tests.

Keys are untrusted input (annotators name the files). `safe_local_path` maps a key into a local
work directory and refuses anything that would land outside it; `join_key` refuses to build a key
that climbs out of its prefix.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrain.errors import InputError


class UnsafeKeyError(InputError, ValueError):
    """An object key or relative path would escape its prefix or work directory."""


#: The error codes S3 (and MinIO/moto) answer for an object or bucket that is not there.
MISSING_CODES = ("404", "NoSuchKey", "NotFound")


def is_missing(exc: Exception) -> bool:
    """True when ``exc`` is botocore's ClientError for a missing object (`MISSING_CODES`)."""
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code") in MISSING_CODES


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int
    last_modified: str = ""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ("bucket", "a/b")."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def join_key(prefix: str, *parts: str) -> str:
    """Join key parts under ``prefix``; refuse absolute parts, ``..`` segments and NUL bytes."""
    out = prefix.rstrip("/")
    for part in parts:
        if "\x00" in part:
            raise UnsafeKeyError(f"NUL byte in key part {part!r}")
        segs = part.split("/")
        if part.startswith("/") or any(s in ("..", ".") for s in segs):
            raise UnsafeKeyError(f"key part {part!r} would escape prefix {prefix!r}")
        out = f"{out}/{part}" if out else part
    return out


def safe_local_path(root: str | Path, relative_key: str) -> Path:
    """The local path for ``relative_key`` under ``root``; never outside ``root``."""
    root_path = Path(root).resolve()
    if "\x00" in relative_key or relative_key.startswith("/"):
        raise UnsafeKeyError(f"unsafe key {relative_key!r}")
    norm = posixpath.normpath(relative_key)
    if norm.startswith("..") or norm == ".":
        raise UnsafeKeyError(f"key {relative_key!r} escapes the work directory")
    path = (root_path / norm).resolve()
    if root_path != path and root_path not in path.parents:
        raise UnsafeKeyError(f"key {relative_key!r} escapes the work directory")
    return path


def client_from_env() -> Any:
    """A boto3 S3 client from AWS_* variables; ``AWS_ENDPOINT_URL`` for MinIO/moto."""
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )


class ObjectStore:
    """One bucket, through a boto3 client."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def for_bucket(self, bucket: str) -> ObjectStore:
        """This store when ``bucket`` is its own, else the same client on ``bucket``."""
        return self if bucket == self.bucket else ObjectStore(self.client, bucket)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def iter_objects(self, prefix: str, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """All objects under ``prefix``, page by page (never the whole listing in memory)."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
        ):
            for obj in page.get("Contents", []):
                yield ObjectInfo(
                    key=obj["Key"],
                    etag=obj["ETag"].strip('"'),
                    size=int(obj["Size"]),
                    last_modified=str(obj.get("LastModified", "")),
                )

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if is_missing(exc):
                return False
            raise

    def head(self, key: str) -> ObjectInfo:
        r = self.client.head_object(Bucket=self.bucket, Key=key)
        return ObjectInfo(key=key, etag=r["ETag"].strip('"'), size=int(r["ContentLength"]))

    def get_object(self, key: str) -> dict[str, Any] | None:
        """boto3's ``get_object`` response (streaming ``Body``, ``LastModified``, ``ContentLength``),
        or None when there is no such object."""
        from botocore.exceptions import ClientError

        try:
            return dict(self.client.get_object(Bucket=self.bucket, Key=key))
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise

    def folders(self, prefix: str) -> list[str]:
        """The names of the "folders" right under ``prefix`` (one listing with a delimiter)."""
        base = prefix.rstrip("/") + "/" if prefix else ""
        names = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base, Delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                name = cp["Prefix"][len(base) :].rstrip("/")
                if name:
                    names.append(name)
        return names

    def get_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def open_stream(self, key: str, etag: str | None = None) -> Any:
        """A streaming body (``iter_lines``/``read``); with ``etag``, fails if the object changed."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if etag:
            kwargs["IfMatch"] = etag
        return self.client.get_object(**kwargs)["Body"]

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key).decode("utf-8"))

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        r = self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        return str(r.get("ETag", "")).strip('"')

    def put_json(self, key: str, obj: Any) -> str:
        data = json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True).encode("utf-8")
        return self.put_bytes(key, data, "application/json")

    def upload_file(self, path: str | Path, key: str, content_type: str | None = None) -> None:
        """Upload a local file (boto3's managed transfer: multipart above 8 MiB, bounded memory)."""
        extra = {"ContentType": content_type} if content_type else None
        self.client.upload_file(str(path), self.bucket, key, ExtraArgs=extra)

    def copy(self, src_key: str, dst_key: str) -> None:
        """Server-side copy within the bucket (managed: multipart for large objects)."""
        self.client.copy({"Bucket": self.bucket, "Key": src_key}, self.bucket, dst_key)

    def download_file(self, key: str, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, key, str(path))

    def upload_dir(self, local_dir: str | Path, prefix: str) -> list[str]:
        """Upload every file under ``local_dir`` to ``prefix``/relative path; return the keys."""
        keys = []
        root = Path(local_dir)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = join_key(prefix, path.relative_to(root).as_posix())
            self.upload_file(path, key)
            keys.append(key)
        return keys

    def download_prefix(self, prefix: str, local_dir: str | Path) -> list[Path]:
        """Download every object under ``prefix`` into ``local_dir``, keeping relative paths."""
        out = []
        base = prefix.rstrip("/") + "/" if prefix else ""
        for obj in self.iter_objects(base):
            rel = obj.key[len(base) :]
            if not rel:
                continue
            dest = safe_local_path(local_dir, rel)
            self.download_file(obj.key, dest)
            out.append(dest)
        return out

    def delete(self, key: str) -> None:
        """Delete one object (no error when it does not exist, as S3 itself)."""
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        n = 0
        for obj in self.iter_objects(prefix):
            self.delete(obj.key)
            n += 1
        return n
