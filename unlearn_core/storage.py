"""One results location addressed by URI, used by the driver and every worker alike.

A ``Store`` is a folder on any file system ``pyarrow.fs`` reaches: a local path,
``file://``, ``s3://``, ``gs://``, ``hdfs://`` or ``abfs://``. Nothing here
assumes that the process reading a file is the one that wrote it, or that two
processes share a disk.

Commit rule: a unit of work is committed by one object written last (its
"marker": a model's info JSON, a trial record, an update index). Object stores
have no atomic rename, but a single PUT is atomic: an object is either absent
or whole. On a local disk the same guarantee comes from writing a temporary
name and renaming it. Readers treat a unit whose marker is absent as not done
and never list temporary names (they start with ``.``).

S3 settings come from the standard environment variables only
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``), never from a config file. A missing bucket is created when the
credentials allow it, else refused with one line naming the bucket.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from unlearn_core.errors import UserInputError

SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "abfs", "abfss")
# The S3 variables a worker needs to reach the same bucket as the driver.
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
          "AWS_REGION", "AWS_DEFAULT_REGION")


def is_local_uri(uri: str) -> bool:
    scheme = urlparse(str(uri)).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def normalise_uri(uri: str | Path) -> str:
    """A local path becomes absolute (``file://`` is dropped); a URI keeps its scheme."""
    text = str(uri)
    scheme = urlparse(text).scheme
    if scheme == "file":
        text = urlparse(text).path
        scheme = ""
    if scheme == "":
        return str(Path(text).expanduser().resolve())
    if scheme not in SCHEMES:
        raise UserInputError(
            f"results location {text!r}: scheme {scheme!r} is not supported "
            f"(expected a local path or one of {', '.join(s + '://' for s in SCHEMES)})"
        )
    return text.rstrip("/")


def s3_filesystem() -> pafs.S3FileSystem:
    """S3 from the standard environment variables (a custom endpoint for S3-compatible stores)."""
    options: dict = {"allow_bucket_creation": True}
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = parsed.netloc
        options["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:  # else the SDK's default chain (instance role, profile)
        options.update(access_key=key, secret_key=secret,
                       session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**options)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) for a normalised URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "":
        return pafs.LocalFileSystem(), uri
    if parsed.scheme == "s3":
        return s3_filesystem(), f"{parsed.netloc}{parsed.path}".rstrip("/")
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as err:  # pyarrow says which part of the URI it could not use
        raise UserInputError(f"results location {uri}: {err}") from err


@dataclass(frozen=True)
class Store:
    """A folder at ``uri``. Pickles as its URI: each process resolves its own file system
    from its own environment (credentials never travel inside a pickle)."""

    uri: str
    _fs: list = field(default_factory=list, repr=False, compare=False)  # lazy cache

    @classmethod
    def at(cls, uri: str | Path, create: bool = True) -> Store:
        store = cls(normalise_uri(uri))
        if create:
            store.ensure_exists()
        return store

    def __getstate__(self) -> dict:
        return {"uri": self.uri}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "uri", state["uri"])
        object.__setattr__(self, "_fs", [])

    # ------------------------------------------------------------------ locations

    @property
    def fs(self) -> pafs.FileSystem:
        if not self._fs:
            self._fs.extend(resolve(self.uri))
        return self._fs[0]

    @property
    def base(self) -> str:
        if not self._fs:
            self._fs.extend(resolve(self.uri))
        return self._fs[1]

    @property
    def is_local(self) -> bool:
        return is_local_uri(self.uri)

    @property
    def local_root(self) -> Path | None:
        """The folder itself when the store is on this machine's disk, else None."""
        return Path(self.uri) if self.is_local else None

    def child(self, rel: str) -> Store:
        return Store(f"{self.uri}/{rel.strip('/')}")

    def path(self, rel: str = "") -> str:
        return f"{self.base}/{rel}".rstrip("/") if rel else self.base

    def url(self, rel: str = "") -> str:
        return f"{self.uri}/{rel}".rstrip("/") if rel else self.uri

    def ensure_exists(self) -> None:
        """Create the folder (and an S3 bucket where the credentials allow it)."""
        if urlparse(self.uri).scheme == "s3":
            bucket = self.base.split("/", 1)[0]
            try:
                info = self.fs.get_file_info(bucket)
                if info.type == pafs.FileType.NotFound:
                    self.fs.create_dir(bucket)
            except OSError as err:
                raise UserInputError(
                    f"S3 bucket {bucket!r} cannot be used: it is missing and could not be "
                    f"created, or these credentials may not reach it ({_first_line(err)})"
                ) from err
            return  # object stores have no folders to create
        try:
            self.fs.create_dir(self.base, recursive=True)
        except OSError as err:
            raise UserInputError(f"results location {self.uri}: {_first_line(err)}") from err

    # ------------------------------------------------------------------ objects

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(rel)) as stream:
                return stream.read()
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{self.url(rel)} does not exist") from err

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write one object whole or not at all (see the module's commit rule)."""
        target = self.path(rel)
        parent = target.rsplit("/", 1)[0]
        if self.is_local:
            self.fs.create_dir(parent, recursive=True)
            tmp = f"{parent}/.tmp-{target.rsplit('/', 1)[1]}.{uuid.uuid4().hex[:8]}"
            try:
                with self.fs.open_output_stream(tmp) as stream:
                    stream.write(data)
                self.fs.move(tmp, target)  # rename: atomic within one file system
            finally:
                if self.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                    self.fs.delete_file(tmp)
            return
        with self.fs.open_output_stream(target) as stream:  # one PUT, visible on close
            stream.write(data)

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def read_json(self, rel: str) -> dict:
        return json.loads(self.read_bytes(rel))

    def read_json_or_none(self, rel: str) -> dict | None:
        """``read_json``, or None when the object does not exist (one request either way)."""
        try:
            return self.read_json(rel)
        except FileNotFoundError:
            return None

    def write_json(self, rel: str, data: dict) -> None:
        self.write_text(rel, json.dumps(data, indent=1, sort_keys=True, default=float))

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))

    def delete_dir(self, rel: str) -> None:
        if self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound:
            self.fs.delete_dir(self.path(rel))

    def list(self, rel: str = "", suffix: str = "", recursive: bool = False) -> list[str]:
        """Relative paths of the committed files under ``rel`` (temporary names skipped)."""
        return sorted(self._rel(info) for info in self._files(rel, recursive)
                      if not suffix or info.base_name.endswith(suffix))

    def file_stats(self, rel: str = "", suffix: str = "") -> list[tuple[str, int, int | None]]:
        """(relative path, bytes, modification time in ns or None) of every committed file
        under ``rel`` whose name ends with ``suffix``, recursively, sorted by path: one
        listing (on an object store, one request per 1000 files, no read)."""
        return sorted((self._rel(info), int(info.size), info.mtime_ns)
                      for info in self._files(rel, recursive=True)
                      if not suffix or info.base_name.endswith(suffix))

    def _rel(self, info: pafs.FileInfo) -> str:
        """A listed file's path relative to the store's base."""
        prefix = self.base + "/"
        return info.path[len(prefix):] if info.path.startswith(prefix) else info.path

    def _files(self, rel: str, recursive: bool) -> list[pafs.FileInfo]:
        """Infos of the committed files under ``rel`` (no part of the path named ``.*``)."""
        root = self.path(rel)
        selector = pafs.FileSelector(root, allow_not_found=True, recursive=recursive)
        return [info for info in self.fs.get_file_info(selector)
                if info.type == pafs.FileType.File
                and not any(part.startswith(".") for part in info.path[len(root) + 1:].split("/"))]

    def size(self, rel: str = "") -> int:
        """Bytes of a file, or of every file under a folder."""
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.File:
            return int(info.size)
        return sum(int(i.size) for i in self._files(rel, recursive=True))

    # ------------------------------------------------------------------ folders

    def put_dir(self, local: str | Path, rel: str, last: str | None = None) -> None:
        """Upload a local folder; the file named ``last`` goes last (it commits the folder)."""
        local = Path(local)
        files = sorted(p for p in local.rglob("*") if p.is_file())
        # stable: the marker (a path relative to ``local``) moves to the end
        files.sort(key=lambda p: p.relative_to(local).as_posix() == last)
        for file in files:
            self.write_bytes(f"{rel}/{file.relative_to(local).as_posix()}", file.read_bytes())

    def get_dir(self, rel: str, local: str | Path) -> Path:
        """Download a folder into ``local`` (created whole under a temporary name)."""
        local = Path(local)
        if local.exists():
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{local.name}.", dir=local.parent))
        prefix = rel.strip("/")
        try:
            for path in self.list(prefix, recursive=True):
                out = tmp / (path[len(prefix) + 1:] if prefix else path)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(self.read_bytes(path))
            os.replace(tmp, local)
        except OSError:
            if not local.exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return local

    def local_cache(self, rel: str) -> Path:
        """A node-local folder for a copy of ``rel`` (the store itself when it is local)."""
        if self.local_root is not None:
            return self.local_root / rel
        digest = hashlib.sha256(self.url(rel).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / "unlearn-cache" / digest

    def fetch_dir(self, rel: str) -> Path:
        """A local folder holding ``rel``: the folder itself on a local store, else a copy."""
        target = self.local_cache(rel)
        return target if self.local_root is not None else self.get_dir(rel, target)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def worker_env() -> dict[str, str]:
    """The S3 variables set in this process, for workers started elsewhere."""
    return {k: os.environ[k] for k in S3_ENV if os.environ.get(k)}
