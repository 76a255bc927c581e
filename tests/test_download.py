"""bench.checkpoints.download.fetch against a real HTTP server on 127.0.0.1 that can misbehave."""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.checkpoints.download import ChecksumMismatch, DownloadError, fetch

FAST = {"retries": 3, "backoff": 0.001, "timeout": 5}


class _Site:
    """Files the server offers, faults queued per path, and a log of (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[tuple]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.base = ""

    def add(self, path: str, body: bytes, *faults: tuple) -> str:
        self.files[path] = body
        self.faults[path] = list(faults)
        return self.base + path


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        """Keep test output clean."""

    def do_GET(self) -> None:
        site: _Site = self.server.site
        range_header = self.headers.get("Range")
        site.requests.append((self.path, range_header))
        body = site.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        queued = site.faults.get(self.path, [])
        fault = queued.pop(0) if queued else ("none",)
        if fault[0] == "status":
            self.send_error(fault[1])
            return
        start = 0
        if range_header and fault[0] != "ignore_range":
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        if fault[0] == "corrupt":
            payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if fault[0] == "cut":
            # Announce the full length, send only a prefix, then drop the connection.
            self.wfile.write(payload[: fault[1]])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture
def site():
    state = _Site()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.site = state
    state.base = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _part(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".part")


def _quarantined(dest: Path) -> list[Path]:
    folder = dest.parent / "quarantine"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_good_file_is_downloaded_and_verified(site, tmp_path):
    body = _payload(5000)
    url = site.add("/model.ckpt", body)
    dest = tmp_path / "model.ckpt"
    got = fetch(url, dest, expected_hash=_md5(body), hash_type="md5", lock_file=None, **FAST)
    assert got == dest
    assert dest.read_bytes() == body
    assert not _part(dest).exists()
    assert site.requests == [("/model.ckpt", None)]


def test_truncated_transfer_is_resumed_with_range(site, tmp_path):
    body = _payload(5000)
    url = site.add("/model.ckpt", body, ("cut", 1234))
    dest = tmp_path / "model.ckpt"
    fetch(url, dest, expected_hash=_sha256(body), hash_type="sha256", lock_file=None, **FAST)
    assert dest.read_bytes() == body
    assert site.requests == [("/model.ckpt", None), ("/model.ckpt", "bytes=1234-")]


def test_server_ignoring_range_restarts_from_zero(site, tmp_path):
    body = _payload(5000)
    url = site.add("/model.ckpt", body, ("cut", 700), ("ignore_range",))
    dest = tmp_path / "model.ckpt"
    fetch(url, dest, expected_hash=_md5(body), hash_type="md5", lock_file=None, **FAST)
    assert dest.read_bytes() == body
    assert [r for _, r in site.requests] == [None, "bytes=700-"]


def test_server_error_mid_transfer_then_resume(site, tmp_path):
    body = _payload(6000)
    url = site.add("/model.ckpt", body, ("cut", 2000), ("status", 500))
    dest = tmp_path / "model.ckpt"
    fetch(url, dest, expected_hash=_md5(body), hash_type="md5", lock_file=None, **FAST)
    assert dest.read_bytes() == body
    assert [r for _, r in site.requests] == [None, "bytes=2000-", "bytes=2000-"]


def test_leftover_part_is_continued(site, tmp_path):
    body = _payload(4000)
    url = site.add("/model.ckpt", body)
    dest = tmp_path / "model.ckpt"
    _part(dest).write_bytes(body[:2500])
    fetch(url, dest, expected_hash=_md5(body), hash_type="md5", lock_file=None, **FAST)
    assert dest.read_bytes() == body
    assert site.requests == [("/model.ckpt", "bytes=2500-")]


def test_part_longer_than_file_is_discarded(site, tmp_path):
    body = _payload(3000)
    url = site.add("/model.ckpt", body)
    dest = tmp_path / "model.ckpt"
    _part(dest).write_bytes(_payload(3100, seed=1))
    fetch(url, dest, expected_hash=_md5(body), hash_type="md5", lock_file=None, **FAST)
    assert dest.read_bytes() == body
    assert [r for _, r in site.requests] == ["bytes=3100-", None]


def test_persistent_server_error_gives_up_after_bounded_attempts(site, tmp_path):
    url = site.add("/model.ckpt", _payload(100), *[("status", 503)] * 10)
    dest = tmp_path / "model.ckpt"
    with pytest.raises(DownloadError, match=r"after 3 attempts.*HTTP 503"):
        fetch(url, dest, expected_hash="0" * 32, hash_type="md5", lock_file=None,
              retries=2, backoff=0.001, timeout=5)
    assert len(site.requests) == 3
    assert not dest.exists()


def test_client_error_is_not_retried(site, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(site.base + "/missing.ckpt", tmp_path / "m.ckpt", expected_hash="0" * 32,
              hash_type="md5", lock_file=None, **FAST)
    assert len(site.requests) == 1


def test_corrupted_transfer_is_quarantined(site, tmp_path):
    body = _payload(5000)
    url = site.add("/model.ckpt", body, ("corrupt",))
    dest = tmp_path / "model.ckpt"
    with pytest.raises(ChecksumMismatch) as caught:
        fetch(url, dest, expected_hash=_md5(body), hash_type="md5", lock_file=None, **FAST)
    received = bytes([body[0] ^ 0xFF]) + body[1:]
    error = caught.value
    assert (error.expected, error.actual) == (_md5(body), _md5(received))
    assert "model.ckpt" in str(error) and _md5(body) in str(error) and _md5(received) in str(error)
    assert not dest.exists() and not _part(dest).exists()
    assert [p.read_bytes() for p in _quarantined(dest)] == [received]
    assert error.quarantined == _quarantined(dest)[0]


def test_wrong_published_hash_is_quarantined(site, tmp_path):
    body = _payload(5000)
    url = site.add("/model.pkl", body)
    dest = tmp_path / "model.pkl"
    wrong = _sha256(b"some other file")
    with pytest.raises(ChecksumMismatch, match=f"expected sha256 {wrong}, got {_sha256(body)}"):
        fetch(url, dest, expected_hash=wrong, hash_type="sha256", lock_file=None, **FAST)
    assert not dest.exists()
    assert [p.read_bytes() for p in _quarantined(dest)] == [body]


def test_lock_file_pins_first_download_and_catches_a_changed_file(site, tmp_path):
    body = _payload(5000)
    url = site.add("/edm.pkl", body)
    dest, lock = tmp_path / "edm.pkl", tmp_path / "pins.json"
    fetch(url, dest, expected_hash=None, hash_type="none", lock_file=lock, **FAST)
    assert json.loads(lock.read_text()) == {url: _sha256(body)}
    fetch(url, dest, expected_hash=None, hash_type="none", lock_file=lock, **FAST)
    assert len(site.requests) == 1

    changed = _payload(5000, seed=7)
    site.files["/edm.pkl"] = changed
    dest.unlink()
    with pytest.raises(ChecksumMismatch) as caught:
        fetch(url, dest, expected_hash=None, hash_type="none", lock_file=lock, **FAST)
    assert (caught.value.expected, caught.value.actual) == (_sha256(body), _sha256(changed))
    assert not dest.exists()
    assert json.loads(lock.read_text()) == {url: _sha256(body)}


def test_complete_verified_file_is_not_fetched_again(site, tmp_path):
    body = _payload(5000)
    url = site.add("/model.ckpt", body)
    dest = tmp_path / "model.ckpt"
    for _ in range(3):
        fetch(url, dest, expected_hash=_md5(body).upper(), hash_type="md5", lock_file=None, **FAST)
    assert len(site.requests) == 1


def test_stale_dest_failing_its_hash_is_replaced(site, tmp_path):
    body = _payload(5000)
    url = site.add("/model.ckpt", body)
    dest = tmp_path / "model.ckpt"
    dest.write_bytes(b"stale")
    fetch(url, dest, expected_hash=_md5(body), hash_type="md5", lock_file=None, **FAST)
    assert dest.read_bytes() == body
    assert [p.read_bytes() for p in _quarantined(dest)] == [b"stale"]


@pytest.mark.parametrize(
    ("expected_hash", "hash_type", "lock_file", "message"),
    [
        ("0" * 32, "sha1", None, r"hash_type 'sha1' is not one of \['md5', 'sha256', 'none'\]"),
        (None, "md5", None, "expected_hash None is not a md5 hex digest"),
        ("abc", "sha256", None, "'abc' is not a sha256 hex digest"),
        (None, "none", None, "no published hash for .*: pass lock_file"),
        ("0" * 64, "none", Path("pins.json"), "given with hash_type 'none'"),
    ],
)
def test_bad_arguments_are_refused_before_any_request(
    site, tmp_path, expected_hash, hash_type, lock_file, message
):
    url = site.add("/model.ckpt", b"x")
    with pytest.raises(ValueError, match=message):
        fetch(url, tmp_path / "m.ckpt", expected_hash=expected_hash, hash_type=hash_type,
              lock_file=lock_file, **FAST)
    assert site.requests == []
