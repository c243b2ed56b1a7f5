"""Training without --data: the book's text is downloaded once, sha1-checked and cached."""
from __future__ import annotations

import http.server
import threading
from functools import partial

import pytest

from rnn_core import data


@pytest.fixture
def text_server(tmp_path, data_path):
    """A local stand-in for the book's URL, counting requests (the real one is unreachable here)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "timemachine.txt").write_bytes(data_path.read_bytes())
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/timemachine.txt", root, hits
    server.shutdown()


def test_downloads_once_checks_sha1_and_caches(tmp_path, monkeypatch, text_server):
    url, _, hits = text_server
    monkeypatch.setattr(data, "TIME_MACHINE_URL", url)
    monkeypatch.setenv("RNN_CORE_CACHE", str(tmp_path / "cache"))
    path = data.download_time_machine()
    assert path == tmp_path / "cache" / "timemachine.txt"
    assert data.sha1_of(path) == data.TIME_MACHINE_SHA1 and len(hits) == 1
    assert data.download_time_machine() == path and len(hits) == 1  # cached: no second request


def test_a_corrupt_download_is_refused_and_not_cached(tmp_path, monkeypatch, text_server):
    url, root, _ = text_server
    (root / "timemachine.txt").write_text("not the book")
    monkeypatch.setattr(data, "TIME_MACHINE_URL", url)
    monkeypatch.setenv("RNN_CORE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(data.DataError, match="did not match its sha1"):
        data.download_time_machine()
    assert not any((tmp_path / "cache").iterdir())


def test_an_unreachable_url_says_to_pass_data(tmp_path, monkeypatch, capsys):
    """The library says to use a local copy; train.py names its flag."""
    monkeypatch.setattr(data, "TIME_MACHINE_URL", "http://127.0.0.1:9/timemachine.txt")
    monkeypatch.setenv("RNN_CORE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(data.DataError, match="train on a local copy of the text$"):
        data.download_time_machine()
    import train
    assert train.main(["--out", str(tmp_path / "run"), "--device", "cpu"]) == train.EXIT_REFUSED
    assert "train on a local copy of the text (--data PATH)" in capsys.readouterr().err
