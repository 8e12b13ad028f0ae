"""The bundle container: one gzip file of JSON lines, checked end to end before use.

Layout (every line one JSON object, UTF-8, ``\\n``-terminated)::

    {"format": "galtea-local-bundle", "version": 1, "kind": "records"|"receipt", ...}   header
    {"type": "session", ...}                                                             content
    {"type": "record", ...}                                                              content
    {"type": "trailer", "counts": {"session": n, "record": m}, "lines": n+m,
     "sha256": "<hex of every byte before the trailer line>"}                            trailer

gzip's CRC catches a damaged file; the SHA-256 in the trailer also covers the
header, and the trailer's presence is what proves the file is complete (a copy
cut short loses it). A writer writes to ``FILE.partial`` and renames it into
place after an fsync, so a crash mid-export never leaves a plausible ``FILE``.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from galtea_local.bundle.signing import UNSIGNED, Signing
from galtea_local.config.schema import BundleSettings
from galtea_local.errors import BundleError, InvalidInputError, InvalidTypeError
from galtea_local.validation import show

FORMAT = "galtea-local-bundle"
VERSION = 1
KINDS = {"records": "galtea-local import", "receipt": "galtea-local import-receipt"}
_FIX_COPY = "copy the file again from the machine that wrote it, or write it again there"
_FIX_LIMIT = "If the file is genuine, raise that bound in the [bundle] section of the config file"


# sort_keys: the same content always gives the same bytes (and the same checksum). One encoder for
# every line: json.dumps() with options builds a new one per call, a third of an export's time.
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def _line(entry: dict[str, Any]) -> bytes:
    return (_encode(entry) + "\n").encode()


def _target(path: Path, header: dict[str, Any]) -> Path:
    """``--out`` may name a folder: the file then gets a name saying what it is, whose and when."""
    if not path.is_dir():
        return path
    store = str(header.get("from_store_id") or header.get("origin_store_id") or "store")[:8]
    stamp = "".join(ch for ch in str(header.get("created_at", ""))[:19] if ch.isalnum())
    return path / f"galtea-local-{header.get('kind', 'bundle')}-{store}-{stamp}Z.glb"


class BundleWriter:
    """Write one bundle: ``with BundleWriter(path, header) as out: out.write(entry)``.

    The file appears at ``path`` only when the block ends without an error.
    """

    def __init__(self, path: Path | str, header: dict[str, Any], signing: Signing = UNSIGNED) -> None:
        self.path = _target(Path(path), header)
        self._signing = signing
        self._mac = signing.new_mac()
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._header = {"format": FORMAT, "version": VERSION, **header}
        self._hash = hashlib.sha256()
        self.counts: Counter[str] = Counter()
        self._raw: IO[bytes] | None = None
        self._gzip: gzip.GzipFile | None = None

    def __enter__(self) -> BundleWriter:
        try:
            # Owner-only from the first byte: a bundle holds every queued conversation.
            fd = os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # a stale .partial keeps its old mode through O_TRUNC
            self._raw = os.fdopen(fd, "wb")
        except OSError as exc:
            raise BundleError(f"{self.path}: cannot write it ({exc.strerror or exc}); choose a writable --out") from None
        # mtime=0: the bytes depend on the content only.
        # Level 6 (zlib's default), not gzip's 9: JSON lines compress nearly as well, several times faster.
        self._gzip = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0, compresslevel=6)
        self._emit(self._header)
        return self

    def _emit(self, entry: dict[str, Any]) -> None:
        data = _line(entry)
        self._hash.update(data)
        if self._mac is not None:
            self._mac.update(data)
        assert self._gzip is not None
        self._gzip.write(data)

    def write(self, entry: dict[str, Any]) -> None:
        """Append one content line; ``entry["type"]`` is counted in the manifest."""
        self._emit(entry)
        self.counts[entry["type"]] += 1

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._gzip is not None and self._raw is not None
        try:
            if exc_type is None:
                trailer = {"type": "trailer", "counts": dict(self.counts), "lines": sum(self.counts.values()),
                           "sha256": self._hash.hexdigest(), **self._signing.trailer_fields(self._mac)}
                self._gzip.write(_line(trailer))
            self._gzip.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
        except BaseException:
            self._discard()
            raise
        if exc_type is not None:
            self._discard()
            return
        self._raw.close()
        try:
            os.replace(self._partial, self.path)
        except OSError as error:  # e.g. the target is a folder created meanwhile: leave no .partial behind
            self._partial.unlink(missing_ok=True)
            raise BundleError(f"{self.path}: cannot write it ({error.strerror or error}); "
                              "choose a writable --out") from None

    def _discard(self) -> None:
        assert self._raw is not None
        self._raw.close()
        self._partial.unlink(missing_ok=True)


def _check_header(path: Path, first: bytes, kind: str) -> dict[str, Any]:
    try:
        header = json.loads(first)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BundleError(f"{path}: not a galtea-local bundle (no bundle header); "
                          "pass a file written by `galtea-local export` or `galtea-local receipt`")
    version = header.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise BundleError(f"{path}: bundle format version {version!r} is newer than this galtea-local reads "
                          f"(up to {VERSION}); upgrade galtea-local on this machine")
    if header.get("kind") != kind:
        other = KINDS.get(header.get("kind"), "a newer galtea-local")
        raise BundleError(f"{path}: this is a {header.get('kind')!r} file, not {kind!r}; read it with {other}")
    return header


_EXPANSION_FLOOR = 2 * 2**20  # below this much output, gzip's header and buffering skew the ratio
_SIP = 8192  # compressed bytes handed to gzip per read, so the ratio is known early


class _Sipping:
    """The compressed file, handed to gzip in small reads: bytes read so far then track bytes used,
    and a bomb shows its expansion within a few MB of output rather than after gzip's 128 KB buffer."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        return self._raw.read(_SIP if size < 0 else min(size, _SIP))

    def tell(self) -> int:
        return self._raw.tell()


def _bounded(path: Path, raw: _Sipping, stream: IO[bytes], limits: BundleSettings) -> Iterator[bytes]:
    """Lines of at most ``limits.max_line_bytes`` each, read in constant memory; past a bound, one clear refusal."""
    total = 0
    for number in itertools.count(1):
        line = stream.readline(limits.max_line_bytes + 1)  # never more than the bound in memory
        if not line:
            return
        total += len(line)
        if len(line) > limits.max_line_bytes:
            raise BundleError(f"{path}: line {number} is longer than bundle.max_line_bytes ({limits.max_line_bytes} "
                              f"bytes); refused. {_FIX_LIMIT}")
        if number > limits.max_lines:
            raise BundleError(f"{path}: more than bundle.max_lines ({limits.max_lines}) lines; refused. {_FIX_LIMIT}")
        if total > limits.max_bytes:
            raise BundleError(f"{path}: decompresses to more than bundle.max_bytes ({limits.max_bytes} bytes); "
                              f"refused. {_FIX_LIMIT}")
        if total > _EXPANSION_FLOOR and total > limits.max_expansion * raw.tell():
            raise BundleError(f"{path}: expands more than bundle.max_expansion ({limits.max_expansion}) times "
                              f"(a gzip bomb?); refused. {_FIX_LIMIT}")
        yield line


def _lines(path: Path, limits: BundleSettings) -> Iterator[bytes]:
    """The decompressed lines, with every read failure translated to a :class:`BundleError`."""
    try:
        with open(path, "rb") as file:
            raw = _Sipping(file)
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:  # type: ignore[call-overload]
                yield from _bounded(path, raw, stream, limits)
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise BundleError(f"{path}: is a folder; pass the bundle file in it") from None
    except EOFError:
        raise BundleError(f"{path}: truncated (the file ends early); {_FIX_COPY}") from None
    except gzip.BadGzipFile as exc:
        if "CRC" in str(exc) or "length" in str(exc):
            raise BundleError(f"{path}: corrupt (gzip check failed: {exc}); {_FIX_COPY}") from None
        raise BundleError(f"{path}: not a galtea-local bundle (not gzip data); pass a file written by "
                          "`galtea-local export` or `galtea-local receipt`") from None
    except (zlib.error, OSError) as exc:
        raise BundleError(f"{path}: corrupt or unreadable ({exc}); {_FIX_COPY}") from None


def _content(path: Path, line: bytes, number: int) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):
        entry = None
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise BundleError(f"{path}: corrupt (line {number} is not a bundle entry); {_FIX_COPY}")
    return entry


def _check_trailer(path: Path, trailer: dict[str, Any] | None, digest: str, counts: Counter[str]) -> None:
    if trailer is None:
        raise BundleError(f"{path}: truncated (no trailer: the copy ends early); {_FIX_COPY}")
    if trailer.get("sha256") != digest:
        raise BundleError(f"{path}: corrupt (checksum mismatch); {_FIX_COPY}")
    if trailer.get("counts") != dict(counts) or trailer.get("lines") != sum(counts.values()):
        raise BundleError(f"{path}: corrupt (manifest counts {trailer.get('counts')} but the file holds "
                          f"{dict(counts)}); {_FIX_COPY}")


class BundleReader:
    """Read a bundle of one ``kind``; every check raises :class:`BundleError` naming the file.

    :meth:`verify` reads the whole file and checks it; :meth:`entries` yields
    the content lines and checks the trailer after the last one, so a caller
    applying entries inside a transaction rolls back if the file changed since.
    """

    def __init__(self, path: Path | str, kind: str, limits: BundleSettings | None = None,
                 signing: Signing | None = None) -> None:
        self.path = Path(path)
        self.kind = kind
        self.limits = limits or BundleSettings()
        self.signing = signing  # None: the signature is not checked (only for a file this process wrote)
        self.header: dict[str, Any] = {}
        self.line = 0  # the line number of the entry last yielded, for messages
        self._digest = hashlib.sha256()

    def entries(self) -> Iterator[dict[str, Any]]:
        self._digest = digest = hashlib.sha256()
        mac = self.signing.new_mac() if self.signing is not None else None
        counts: Counter[str] = Counter()
        trailer: dict[str, Any] | None = None
        lines = _lines(self.path, self.limits)
        first = next(lines, None)
        if first is None:
            raise BundleError(f"{self.path}: empty file, not a galtea-local bundle; check the path")
        try:
            self.header = _check_header(self.path, first, self.kind)
        except BundleError:
            for _ in lines:  # a damaged file says so by its end (gzip's CRC): that is the better reason
                pass
            raise
        digest.update(first)
        if mac is not None:
            mac.update(first)
        for number, line in enumerate(lines, start=2):
            if trailer is not None:
                raise BundleError(f"{self.path}: corrupt (data after the trailer); {_FIX_COPY}")
            entry = _content(self.path, line, number)
            if entry["type"] == "trailer":
                trailer = entry
                continue
            digest.update(line)
            if mac is not None:
                mac.update(line)
            counts[entry["type"]] += 1
            self.line = number
            yield entry
        _check_trailer(self.path, trailer, digest.hexdigest(), counts)
        if self.signing is not None:
            self.signing.check(self.path, trailer or {}, mac)

    def digest_so_far(self) -> str:
        """The SHA-256 of every line read so far by :meth:`entries` (header included)."""
        return self._digest.copy().hexdigest()

    def checked(self, check: Callable[[dict[str, Any]], None]) -> Iterator[dict[str, Any]]:
        """:meth:`entries`, each passed through ``check``; a line it refuses is a :class:`BundleError` naming it.

        Before refusing a line, the rest of the file is read: if the file is damaged
        (checksum, gzip CRC), that is the reason given, not the damaged line's content.
        """
        entries = self.entries()
        for entry in entries:
            try:
                check(entry)
            except (InvalidInputError, InvalidTypeError) as error:
                refusal = BundleError(f"{self.path}: line {self.line} ({entry['type']} "
                                      f"{show(entry.get('origin_seq'))}): {error}; nothing was imported. Fix it "
                                      "where the file was written, and write the file again")
                for _ in entries:
                    pass
                raise refusal from None
            yield entry

    def verify(self, check: Callable[[dict[str, Any]], None] = lambda entry: None) -> dict[str, Any]:
        """Read and check the whole file (and each line with ``check``) without using it; return the counts."""
        counts: Counter[str] = Counter()
        for entry in self.checked(check):
            counts[entry["type"]] += 1
        return dict(counts)
