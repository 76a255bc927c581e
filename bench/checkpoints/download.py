"""Resumable, verified checkpoint download over HTTP(S), standard library only (urllib)."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

HASH_TYPES = ("md5", "sha256", "none")
_HEX_LENGTH = {"md5": 32, "sha256": 64}
_CHUNK_BYTES = 1 << 20
_USER_AGENT = "dpm-bench-checkpoint-fetch"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A download that could not be completed."""


class ChecksumMismatch(DownloadError):
    """A downloaded file whose hash differs from the expected one; the file is quarantined."""

    def __init__(
        self, *, url: str, dest: Path, quarantined: Path, hash_type: str, expected: str, actual: str
    ) -> None:
        self.url = url
        self.dest = dest
        self.quarantined = quarantined
        self.hash_type = hash_type
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"checksum mismatch for {dest.name} (from {url}): expected {hash_type} {expected}, "
            f"got {actual}; the file was moved to {quarantined}"
        )


class _Retryable(Exception):
    """A failure that another attempt may get past (connection trouble, 5xx, short read)."""


class _RangeRefused(_Retryable):
    """HTTP 416 to a resume request: the partial file is not a prefix the server can continue."""


def file_digest(path: Path, hash_type: str) -> str:
    """Hex digest of a file's content with hashlib's md5 or sha256."""
    if hash_type not in _HEX_LENGTH:
        raise ValueError(f"cannot digest with {hash_type!r}; use one of {list(_HEX_LENGTH)}")
    digest = hashlib.new(hash_type)
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def read_lock(lock_file: Path) -> dict[str, str]:
    """The lock file's URL -> sha256 pins ({} if the file does not exist yet)."""
    if not lock_file.exists():
        return {}
    try:
        pins = json.loads(lock_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DownloadError(f"lock file {lock_file} is not valid JSON: {exc}") from None
    valid = isinstance(pins, dict) and all(
        isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in pins.values()
    )
    if not valid:
        raise DownloadError(f"lock file {lock_file} must be a JSON object of URL -> sha256 hex")
    return pins


def _record_pin(lock_file: Path, url: str, sha256: str) -> None:
    pins = read_lock(lock_file)
    pins[url] = sha256
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    scratch = lock_file.with_suffix(lock_file.suffix + ".tmp")
    scratch.write_text(json.dumps(pins, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(scratch, lock_file)


def _expected_digest(
    url: str, expected_hash: str | None, hash_type: str, lock_file: Path | None
) -> tuple[str, str] | None:
    """(hash_type, hex) to verify against: the published hash, else the lock-file pin, else None."""
    if hash_type not in HASH_TYPES:
        raise ValueError(f"hash_type {hash_type!r} is not one of {list(HASH_TYPES)}")
    if hash_type == "none":
        if expected_hash is not None:
            raise ValueError(f"expected_hash {expected_hash!r} given with hash_type 'none'")
        if lock_file is None:
            raise ValueError(
                f"no published hash for {url}: pass lock_file so that the first download's sha256 "
                "is recorded and later downloads are checked against it"
            )
        pin = read_lock(lock_file).get(url)
        return ("sha256", pin) if pin else None
    if expected_hash is None or not re.fullmatch(
        rf"[0-9a-fA-F]{{{_HEX_LENGTH[hash_type]}}}", expected_hash
    ):
        raise ValueError(
            f"expected_hash {expected_hash!r} is not a {hash_type} hex digest "
            f"({_HEX_LENGTH[hash_type]} hex digits)"
        )
    return hash_type, expected_hash.lower()


def _quarantine(path: Path, dest: Path, actual: str) -> Path:
    """Move a file that failed verification next to dest, under quarantine/, never overwriting."""
    folder = dest.parent / "quarantine"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{dest.name}.{actual[:16]}"
    counter = 1
    while target.exists():
        target = folder / f"{dest.name}.{actual[:16]}.{counter}"
        counter += 1
    os.replace(path, target)
    return target


def _parse_content_range(value: str | None) -> tuple[int, int | None]:
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        raise ValueError(f"unreadable Content-Range {value!r}")
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            raise _RangeRefused(f"server refused bytes={offset}-; starting over") from None
        if exc.code == 429 or exc.code >= 500:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Retryable(f"cannot connect: {exc}") from None


def _download_once(url: str, part: Path, timeout: float) -> None:
    """Append the rest of url's body to part (or restart it); raise _Retryable when incomplete."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except _RangeRefused:
        part.unlink()
        raise
    with response:
        if response.status == 206:
            try:
                start, total = _parse_content_range(response.headers.get("Content-Range"))
            except ValueError as exc:
                part.unlink(missing_ok=True)
                raise _Retryable(f"{exc}; starting over") from None
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retryable(f"server resumed at byte {start}, not {offset}; starting over")
            mode = "ab"
        elif response.status == 200:
            # Either a fresh download or a server that ignored our Range header: start over.
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        else:
            raise DownloadError(f"unexpected HTTP status {response.status} for {url}")
        with open(part, mode) as sink, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name, disable=None, leave=False,
        ) as bar:
            while True:
                try:
                    block = response.read(_CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Retryable(f"connection lost: {exc!r}") from None
                if not block:
                    break
                sink.write(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Retryable(f"short read: {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink()
        raise _Retryable(f"received {size} bytes, more than the announced {total}; starting over")


def _download(url: str, part: Path, retries: int, backoff: float, timeout: float) -> None:
    attempts = retries + 1
    last_error: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _download_once(url, part, timeout)
            return
        except _Retryable as exc:
            last_error = exc
            log.warning("download of %s, attempt %d of %d: %s", url, attempt + 1, attempts, exc)
    raise DownloadError(
        f"giving up on {url} after {attempts} attempts (last error: {last_error}); "
        f"partial data kept in {part} for a later resume"
    )


def fetch(
    url: str,
    dest: Path,
    *,
    expected_hash: str | None,
    hash_type: str,
    lock_file: Path | None,
    retries: int = 5,
    backoff: float = 0.5,
    timeout: float = 60,
) -> Path:
    """Download url to dest (resuming a .part file) and verify it; return dest.

    Verification uses the published hash, or for hash_type 'none' the sha256 pinned in lock_file
    (the first verified download records it). A failing file is moved to dest.parent/quarantine
    and ChecksumMismatch is raised; dest only ever holds a verified file.
    """
    if retries < 0 or backoff < 0 or timeout <= 0:
        raise ValueError(f"need retries >= 0, backoff >= 0, timeout > 0; got {retries}, "
                         f"{backoff}, {timeout}")
    dest = Path(dest)
    lock_file = Path(lock_file) if lock_file is not None else None
    expected = _expected_digest(url, expected_hash, hash_type, lock_file)
    if dest.exists() and expected is not None:
        actual = file_digest(dest, expected[0])
        if actual == expected[1]:
            return dest
        moved = _quarantine(dest, dest, actual)
        log.warning("%s fails its %s check (got %s); moved to %s, downloading again",
                    dest, expected[0], actual, moved)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    _download(url, part, retries, backoff, timeout)
    check_type = expected[0] if expected is not None else "sha256"
    actual = file_digest(part, check_type)
    if expected is not None and actual != expected[1]:
        moved = _quarantine(part, dest, actual)
        raise ChecksumMismatch(url=url, dest=dest, quarantined=moved, hash_type=check_type,
                               expected=expected[1], actual=actual)
    os.replace(part, dest)
    if expected is None:
        _record_pin(lock_file, url, actual)
    return dest
