"""An app to measure or test, run as its users run it: `python app.py` (or another Gradio app
file) in a subprocess on a free loopback port. The one runner for bench/ and tests/."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from bench.common import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_config(port: int, timeout: float = 1.0) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=timeout) as r:
        return json.load(r)


class AppServer:
    """`python APP` (app.py by default, relative to `cwd`) on a free port (GRADIO_SERVER_NAME /
    GRADIO_SERVER_PORT), with extra environment variables `env` (None removes one). Its output
    goes to `log_dir`/app-PORT.log (or nowhere without one). Returns once /config answers
    (`config`); raises RuntimeError with the output if it exits or is not ready in `timeout` s."""

    def __init__(self, log_dir: Path | None = None, app: str | os.PathLike = "app.py",
                 cwd: Path = ROOT, timeout: float = 120.0, **env: str | None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log_dir) / f"app-{self.port}.log" if log_dir is not None else None
        full_env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1",
                    "GRADIO_SERVER_PORT": str(self.port), "GRADIO_ANALYTICS_ENABLED": "False",
                    "HF_HUB_DISABLE_XET": "1", "PYTHONUNBUFFERED": "1", **env}
        for key in [k for k, v in env.items() if v is None]:
            full_env.pop(key)
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen([sys.executable, str(app)], cwd=cwd, env=full_env,
                                         stdout=out, stderr=subprocess.STDOUT)
        finally:
            if self.log:
                out.close()
        self.pid = self.proc.pid
        self.config = self._wait(timeout)

    def _wait(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited ({self.proc.returncode}):\n{self.output()}")
            try:
                return get_config(self.port, timeout=2)
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"the app did not start within {timeout:.0f} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else "(output not kept)"

    def client(self):
        """A gradio_client Client for this app."""
        from gradio_client import Client
        return Client(self.url, verbose=False)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def connect_app(port: int = 0, server_pid: int = 0, app: str | os.PathLike = ROOT / "app.py",
                **env: str) -> tuple[int, psutil.Process, AppServer | None, dict]:
    """A running app on `port` (its process `server_pid`), or a fresh one started on a free
    port: (port, server process, the AppServer to stop or None, its config)."""
    if port:
        return port, psutil.Process(server_pid or None), None, get_config(port)
    server = AppServer(app=app, **env)
    return server.port, psutil.Process(server.pid), server, server.config
