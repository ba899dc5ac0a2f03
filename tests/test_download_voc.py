"""``vitlens download-voc`` against a local HTTP server (127.0.0.1, Range requests supported) serving a small
VOC-layout tar made from the ten real voc-mini images: download, resume after a dropped connection, checksum
mismatch, and an archive that breaks half-way through extraction."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from compute.cli import app
from compute.data.voc import VOCSegmentation

cli = CliRunner()
ARCHIVE = "VOCtrainval_11-May-2012.tar"


class _Server:
    """Serves ``data`` at /<ARCHIVE>; with ``drop_after`` the first GET sends the full Content-Length but only
    that many bytes, then closes the connection. ``ranges`` records every request's Range header."""

    def __init__(self, data: bytes, drop_after: int | None = None):
        self.data, self.drop_after, self.ranges = data, drop_after, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.ranges.append(self.headers.get("Range"))
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                body = server.data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.data) - 1}/{len(server.data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop_after is not None:
                    cut, server.drop_after = server.drop_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{ARCHIVE}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def voc_tar(voc_mini) -> bytes:
    """voc-mini as a tar laid out like the official archive (VOCdevkit/VOC2012/...)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(voc_mini / "VOCdevkit" / "VOC2012", arcname="VOCdevkit/VOC2012")
    return buf.getvalue()


@pytest.fixture
def serve():
    servers = []

    def start(data: bytes, drop_after: int | None = None) -> _Server:
        servers.append(_Server(data, drop_after))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _download(to, url, md5):
    return cli.invoke(app, ["download-voc", "--to", str(to), "--url", url, "--md5", md5])


def test_download_extracts_a_tree_the_reader_reads(voc_tar, serve, tmp_path):
    server = serve(voc_tar)
    result = _download(tmp_path / "voc", server.url, hashlib.md5(voc_tar).hexdigest())
    assert result.exit_code == 0, result.output
    data = VOCSegmentation(tmp_path / "voc", "val")
    assert len(data) == 10 and data[0].mask.shape == (data[0].image.height, data[0].image.width)
    assert not (tmp_path / "voc" / ARCHIVE).exists()  # not kept without --keep-archive
    assert sorted(p.name for p in (tmp_path / "voc").iterdir()) == ["VOCdevkit"]  # no staging folder left


def test_url_and_md5_can_come_from_the_environment(voc_tar, serve, tmp_path):
    server = serve(voc_tar)
    result = cli.invoke(app, ["download-voc", "--to", str(tmp_path / "voc")],
                        env={"VITLENS_VOC_URL": server.url, "VITLENS_VOC_MD5": hashlib.md5(voc_tar).hexdigest()})
    assert result.exit_code == 0, result.output
    assert len(VOCSegmentation(tmp_path / "voc", "val")) == 10


def test_an_interrupted_download_resumes_with_a_range_request(voc_tar, serve, tmp_path):
    cut = len(voc_tar) // 2
    server = serve(voc_tar, drop_after=cut)
    md5 = hashlib.md5(voc_tar).hexdigest()
    first = _download(tmp_path / "voc", server.url, md5)
    assert first.exit_code == 2, first.output
    text = " ".join(first.output.split())
    assert "interrupted" in text and "run the same command again" in text and "Traceback" not in first.output
    partial = tmp_path / "voc" / (ARCHIVE + ".part")
    assert partial.stat().st_size == cut and not (tmp_path / "voc" / "VOCdevkit").exists()

    second = _download(tmp_path / "voc", server.url, md5)
    assert second.exit_code == 0, second.output
    assert server.ranges == [None, f"bytes={cut}-"]  # the second run asked only for the rest
    assert len(VOCSegmentation(tmp_path / "voc", "val")) == 10
    assert not partial.exists()


def test_a_checksum_mismatch_names_both_sums_and_extracts_nothing(voc_tar, serve, tmp_path):
    server = serve(voc_tar)
    wrong = "0" * 32
    result = _download(tmp_path / "voc", server.url, wrong)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"expected md5 {wrong}, got {hashlib.md5(voc_tar).hexdigest()}" in text
    assert "run the command again" in text and "Traceback" not in result.output
    assert list((tmp_path / "voc").iterdir()) == []  # no tree, no partial download


def test_an_archive_that_breaks_mid_extraction_leaves_no_tree(voc_tar, serve, tmp_path):
    broken = voc_tar[: len(voc_tar) * 2 // 3]  # its MD5 is what the server promises, but the tar ends early
    server = serve(broken)
    result = _download(tmp_path / "voc", server.url, hashlib.md5(broken).hexdigest())
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "cannot extract" in text and "nothing was extracted" in text and "Traceback" not in result.output
    assert not (tmp_path / "voc" / "VOCdevkit").exists()
    assert [p.name for p in (tmp_path / "voc").iterdir()] == [ARCHIVE]  # only the archive, to delete or retry
