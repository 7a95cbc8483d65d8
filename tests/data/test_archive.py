"""download: https only, pinned checksum, a verified copy on disk is kept; real HTTP, 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator

import pytest
from local_http import Server

from vitmim.data import OFFICIAL_URL, download
from vitmim.data.archive import PINNED
from vitmim.errors import UserError


@pytest.fixture()
def server(tiny_tin) -> Iterator[Server]:
    """Serve the fake archive's folder on 127.0.0.1."""
    with Server(tiny_tin.parent) as s:
        yield s


@pytest.fixture()
def http_server(server) -> str:
    """The base URL of ``server``."""
    return server.url


def test_download_ok(http_server, tiny_tin, tmp_path):
    digest = hashlib.sha256(tiny_tin.read_bytes()).hexdigest()
    dest = download(
        f"{http_server}/{tiny_tin.name}",
        tmp_path / "d" / "t.zip",
        sha256=digest,
        progress=False,
        allow_local_http=True,
    )
    assert dest.read_bytes() == tiny_tin.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["t.zip"]


def test_download_checksum_mismatch(http_server, tiny_tin, tmp_path):
    dest = tmp_path / "t.zip"
    with pytest.raises(UserError, match="sha256 mismatch"):
        download(
            f"{http_server}/{tiny_tin.name}",
            dest,
            sha256="0" * 64,
            progress=False,
            allow_local_http=True,
        )
    assert list(tmp_path.iterdir()) == []


def test_download_http_error(http_server, tmp_path):
    with pytest.raises(UserError, match="missing.zip: download failed"):
        download(
            f"{http_server}/missing.zip", tmp_path / "t.zip", progress=False, allow_local_http=True
        )
    assert list(tmp_path.iterdir()) == []


def test_official_url_is_https():
    assert OFFICIAL_URL.startswith("https://") and OFFICIAL_URL.endswith("/tiny-imagenet-200.zip")


def test_plain_http_refused_without_contacting_the_server(server, tiny_tin, tmp_path):
    for url in (
        f"{server.url}/{tiny_tin.name}",
        "http://example.com/tiny-imagenet-200.zip",
        "ftp://example.com/x.zip",
        "file:///etc/passwd",
    ):
        with pytest.raises(UserError, match="only https downloads are accepted") as e:
            download(url, tmp_path / "d" / "t.zip", progress=False)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="only https"):  # the test switch is for this machine
        download(
            "http://example.com/x.zip",
            tmp_path / "d" / "t.zip",
            progress=False,
            allow_local_http=True,
        )
    assert server.requests == [] and not (tmp_path / "d").exists()


def test_redirect_to_plain_http_refused(server, tiny_tin, tmp_path):
    with pytest.raises(UserError, match="http://example.com/t.zip: only https"):
        download(
            f"{server.url}/to/http://example.com/t.zip",
            tmp_path / "t.zip",
            progress=False,
            allow_local_http=True,
        )
    assert server.requests == ["/to/http://example.com/t.zip"]
    assert list(tmp_path.iterdir()) == []


def test_pinned_checksum_refuses_another_archive(server, tiny_tin, tmp_path):
    # The fake archive has the official name but not the official bytes.
    dest = tmp_path / "tiny-imagenet-200.zip"
    with pytest.raises(UserError, match=f"sha256 mismatch .*expected sha256 {PINNED[0][1]}") as e:
        download(f"{server.url}/{tiny_tin.name}", dest, progress=False, allow_local_http=True)
    assert "\n" not in str(e.value) and "nothing saved" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no partial file either


def test_verified_copy_on_disk_is_kept(server, tiny_tin, tmp_path, capsys):
    dest = tmp_path / "t.zip"
    shutil.copy(tiny_tin, dest)
    digest = hashlib.sha256(tiny_tin.read_bytes()).hexdigest()
    url = f"{server.url}/{tiny_tin.name}"
    assert download(url, dest, sha256=digest, progress=False, allow_local_http=True) == dest
    assert server.requests == [] and "not downloading" in capsys.readouterr().err
    # a damaged copy that vitmim did not write is the user's file: refused, not replaced
    dest.write_bytes(b"a damaged copy")
    with pytest.raises(UserError, match="t.zip: exists and was not written by vitmim.*delete it"):
        download(url, dest, sha256=digest, progress=False, allow_local_http=True)
    assert server.requests == [] and dest.read_bytes() == b"a damaged copy"
    dest.unlink()
    download(url, dest, sha256=digest, progress=False, allow_local_http=True)
    assert server.requests == [f"/{tiny_tin.name}"] and dest.read_bytes() == tiny_tin.read_bytes()


@pytest.mark.real_data
def test_real_archive_matches_the_pin(real_tin, tmp_path):
    """The real archive: downloaded over HTTP it passes the pin; already at dest it is kept."""
    with Server(real_tin.parent) as server:
        dest = download(
            f"{server.url}/{real_tin.name}",
            tmp_path / real_tin.name,
            progress=False,
            allow_local_http=True,
        )
        assert dest.stat().st_size == real_tin.stat().st_size
        kept = tmp_path / "kept" / real_tin.name
        kept.parent.mkdir()
        os.symlink(real_tin, kept)
        assert (
            download(f"{server.url}/{real_tin.name}", kept, progress=False, allow_local_http=True)
            == kept
        )
        assert server.requests == [f"/{real_tin.name}"]
