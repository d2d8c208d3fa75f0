"""download_amazon against a local HTTP server: whole files, a resumed download, no network."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dien.data.download import DownloadError, amazon_urls, download_amazon, download_file

FILES = {
    "/reviews_Books_5.json.gz": bytes(range(256)) * 40,
    "/meta_Books.json.gz": b"meta" * 1000,
}


class Handler(BaseHTTPRequestHandler):
    """Serves FILES with Range support; ``cut`` > 0 breaks the next full answer off early."""

    ranges: list[str | None] = []
    cut = 0
    honour_range = True

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        data = FILES.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        start = int(header[len("bytes=") : -1]) if header and self.honour_range else 0
        if start >= len(data):
            self.send_error(416, "Range Not Satisfiable")
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if type(self).cut:
            body, type(self).cut = body[: type(self).cut], 0
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    Handler.ranges, Handler.cut, Handler.honour_range = [], 0, True
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_urls_follow_the_2014_layout():
    urls = amazon_urls("Electronics")
    assert urls["reviews"].endswith("/categoryFiles/reviews_Electronics_5.json.gz")
    assert urls["meta"].endswith("/categoryFiles/meta_Electronics.json.gz")
    with pytest.raises(ValueError, match="category"):
        amazon_urls("../etc")


def test_downloads_both_files_and_keeps_complete_ones(server, tmp_path):
    reviews, meta = download_amazon("Books", tmp_path, progress=False, base_url=server)
    assert reviews.read_bytes() == FILES["/reviews_Books_5.json.gz"]
    assert meta.read_bytes() == FILES["/meta_Books.json.gz"]
    assert not list(tmp_path.glob("*.part"))
    download_amazon("Books", tmp_path, progress=False, base_url=server)
    assert len(Handler.ranges) == 2  # nothing fetched again


def test_an_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    url = server + "reviews_Books_5.json.gz"
    data = FILES["/reviews_Books_5.json.gz"]
    Handler.cut = 3000
    with pytest.raises(DownloadError, match=r"broke off.*next run resumes it"):
        download_file(url, tmp_path / "r.gz", progress=False)
    assert (tmp_path / "r.gz.part").read_bytes() == data[:3000]
    assert not (tmp_path / "r.gz").exists()

    download_file(url, tmp_path / "r.gz", progress=False)
    assert Handler.ranges == [None, "bytes=3000-"]
    assert (tmp_path / "r.gz").read_bytes() == data


def test_a_server_ignoring_range_restarts_the_file(server, tmp_path):
    Handler.honour_range = False
    (tmp_path / "m.gz.part").write_bytes(b"stale bytes")
    download_file(server + "meta_Books.json.gz", tmp_path / "m.gz", progress=False)
    assert (tmp_path / "m.gz").read_bytes() == FILES["/meta_Books.json.gz"]


def test_missing_file_names_the_http_error(server, tmp_path):
    with pytest.raises(DownloadError, match=r"reviews_Bookz_5.json.gz: .*HTTP 404.*category"):
        download_amazon("Bookz", tmp_path, progress=False, base_url=server)


def test_no_network_gives_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(DownloadError) as err:
        download_amazon("Books", tmp_path, progress=False, base_url=url)
    message = str(err.value)
    assert f"cannot reach {url}reviews_Books_5.json.gz" in message
    assert "no network connection" in message and "--reviews FILE --meta FILE" in message
