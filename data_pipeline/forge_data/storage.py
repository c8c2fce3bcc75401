"""Where the pipeline's files live: a local path or an object-store URI (s3://, gs://), one interface.

Every path the data pipeline is given (inputs, output folder, tokenizer, manifest) may be a local
path or a URI; `resolve_filesystem` turns it into (pyarrow filesystem, path inside it), and the
few operations the pipeline needs on whole files are here: read, write with a commit (`publish`),
list sizes, check a place before any work (`check_location`). Local paths take the same syscalls
as before; only URIs go through the object store.

Credentials and endpoint come from the environment only, never from a job spec: s3:// uses the
AWS SDK's default chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a web identity, the instance's
role) and `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` for an S3-compatible store (MinIO, moto),
`AWS_REGION` (or `AWS_DEFAULT_REGION`) for the region; without either the bucket's region is asked
once. pyarrow's `S3FileSystem()` reads no endpoint from the environment, so it is built here.

A place that cannot be used is one line naming it (`StorageError`): an endpoint that cannot be
reached, credentials the store refuses, a bucket or a file that does not exist (`StorageNotFound`,
also a FileNotFoundError so callers that handle a missing file keep doing so). Both are OSErrors
on purpose: a missing manifest was a FileNotFoundError before object stores, and callers catch it.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import uuid
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

_AWS_ERROR = re.compile(r"AWS Error (\w+)")
_REFUSED = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "EXPIRED_TOKEN",
            "INVALID_CLIENT_TOKEN_ID", "UNRECOGNIZED_CLIENT", "MISSING_AUTHENTICATION_TOKEN")


class StorageError(OSError):
    """A storage place the user named cannot be used (unreachable, refused, missing): one line naming it."""


class StorageNotFound(StorageError, FileNotFoundError):
    """A bucket or file that does not exist."""


class StorageUnreachable(StorageError):
    """The store did not answer (network, endpoint): unlike a refusal or a missing bucket, a later
    attempt may succeed, so a training worker's retry is not stopped for it."""


def is_uri(path: str) -> bool:
    """True for `scheme://...` (object stores, file://), False for plain local paths."""
    return "://" in str(path)


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


@functools.lru_cache(maxsize=256)
def _bucket_region(bucket: str) -> str:
    """AWS's region of a bucket (one request; only when neither region nor endpoint is set)."""
    try:
        return pafs.resolve_s3_region(bucket)
    except (OSError, pa.ArrowException) as exc:
        raise explain(exc, f"s3://{bucket}") from None


def _s3(bucket: str) -> pafs.S3FileSystem:
    endpoint = _endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
    kwargs = {}
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs = {"endpoint_override": parts.netloc + parts.path.rstrip("/"), "scheme": parts.scheme}
        region = region or "us-east-1"  # S3-compatible stores take any; AWS's SDK needs one
    return pafs.S3FileSystem(region=region or _bucket_region(bucket), **kwargs)


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for `uri` and the path inside it (plain paths are local)."""
    uri = str(uri)
    if not is_uri(uri):
        return pafs.LocalFileSystem(), uri
    scheme, rest = uri.split("://", 1)
    if scheme == "s3":
        return _s3(rest.split("/", 1)[0]), rest.rstrip("/")
    return pafs.FileSystem.from_uri(uri)


def join(base: str, *names: str) -> str:
    """`base/name/...`: posix separators for URIs, the OS's for local paths."""
    return posixpath.join(str(base), *names) if is_uri(base) else os.path.join(base, *names)


def where(uri: str) -> str:
    """The store a URI lives on, for messages: the S3 endpoint in use, or the scheme."""
    if str(uri).startswith("s3://"):
        return f"the S3 endpoint {_endpoint()}" if _endpoint() else "AWS S3"
    return uri.split("://", 1)[0] + "://" if is_uri(uri) else "local disk"


def explain(exc: BaseException, uri: str) -> StorageError:
    """One line naming `uri` and what went wrong, from a pyarrow/OS error about it."""
    if isinstance(exc, StorageError):
        return exc
    text = " ".join(str(exc).split())
    match = _AWS_ERROR.search(text)
    code = match.group(1) if match else ""  # pyarrow's S3 errors carry the SDK's code: "AWS Error ACCESS_DENIED"
    bucket = uri.split("://", 1)[1].split("/", 1)[0] if is_uri(uri) else ""
    if isinstance(exc, FileNotFoundError) or code in ("NO_SUCH_BUCKET", "RESOURCE_NOT_FOUND", "NO_SUCH_KEY"):
        what = f"bucket {bucket!r} does not exist" if code == "NO_SUCH_BUCKET" else "does not exist"
        return StorageNotFound(f"{uri}: {what} (on {where(uri)})")
    if code == "NETWORK_CONNECTION" or "curlCode" in text:
        detail = text.split("Details: ", 1)[-1] if "Details: " in text else text
        return StorageUnreachable(f"{uri}: cannot reach {where(uri)} ({detail}); check AWS_ENDPOINT_URL and the network")
    if code in _REFUSED:
        return StorageError(f"{uri}: {where(uri)} refused the credentials for bucket {bucket!r} (AWS Error {code}); "
                            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the workload identity")
    return StorageError(f"{uri}: {type(exc).__name__}: {text}")


def check_location(uri: str, write: bool = False) -> None:
    """Fail early, in one line, when `uri` is on a store that cannot be reached, refuses the
    credentials, or has no such bucket; with `write`, also when the credentials may not write there
    (an empty object is written and removed). Local paths are not checked (nothing changes for them)."""
    if not is_uri(uri):
        return
    try:
        fs, path = resolve_filesystem(uri)
        bucket = path.split("/", 1)[0]
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StorageNotFound(f"{uri}: bucket {bucket!r} does not exist (on {where(uri)})")
        if write:
            probe = posixpath.join(path.rstrip("/"), f".forge-write-check-{uuid.uuid4().hex}")
            with fs.open_output_stream(probe) as sink:
                sink.write(b"")
            fs.delete_file(probe)
    except (OSError, pa.ArrowException) as exc:
        raise explain(exc, uri) from None


def read_bytes(uri: str) -> bytes:
    """A whole file; StorageNotFound (a FileNotFoundError) when there is none."""
    return read_buffer(uri).to_pybytes()


def read_buffer(uri: str) -> pa.Buffer:
    """A whole file as an Arrow buffer (one request on an object store)."""
    try:
        fs, path = resolve_filesystem(uri)
        with fs.open_input_file(path) as f:
            return f.read_buffer()
    except (OSError, pa.ArrowException) as exc:
        raise explain(exc, uri) from None


def publish(uri: str, data: bytes) -> None:
    """Write a whole file so that readers see the old one, none, or all of the new one, never a part:
    local files go to a temporary name and are renamed; an object store makes an object visible
    only once its upload completes. Used for the commit points (manifest.json, store.json)."""
    try:
        fs, path = resolve_filesystem(uri)
        if isinstance(fs, pafs.LocalFileSystem):
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with fs.open_output_stream(tmp) as sink:
                sink.write(data)
            fs.move(tmp, path)
            return
        with fs.open_output_stream(path) as sink:
            sink.write(data)
    except (OSError, pa.ArrowException) as exc:
        raise explain(exc, uri) from None


def remove(uri: str) -> None:
    """Delete a file if it is there (withdraws a commit point before its data is rewritten)."""
    fs, path = resolve_filesystem(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
    except (OSError, pa.ArrowException) as exc:
        raise explain(exc, uri) from None


def is_dir(uri: str) -> bool:
    """True when `uri` is a folder (a prefix with objects under it, on an object store)."""
    try:
        fs, path = resolve_filesystem(uri)
        return fs.get_file_info(path).type == pafs.FileType.Directory
    except (OSError, pa.ArrowException) as exc:
        raise explain(exc, uri) from None


def file_size(path: str) -> int | None:
    """Bytes of the file at `path` (local or a URI); None when no file is there. On an object store a
    missing bucket, refused credentials or no answer is a `StorageError` naming it."""
    if not is_uri(path):
        return os.path.getsize(path) if os.path.isfile(path) else None
    try:
        fs, inner = resolve_filesystem(path)
        info = fs.get_file_info(inner)
    except (OSError, pa.ArrowException) as exc:
        raise explain(exc, path) from None
    return int(info.size or 0) if info.type == pafs.FileType.File else None


def file_sizes(folder: str) -> dict[str, int]:
    """{path relative to `folder`: size} of every file below it, from one listing ({} if none)."""
    try:
        fs, path = resolve_filesystem(folder)
        base = path.rstrip("/") + "/"
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except (OSError, pa.ArrowException) as exc:
        raise explain(exc, folder) from None
    return {i.path[len(base):]: int(i.size or 0) for i in infos if i.type == pafs.FileType.File}
