"""A light asyncio client for one streaming Gradio event, and a way to run the app to test.

Gradio 6's queue protocol (`sse_v3`, as gradio_client speaks it): POST
`{api_prefix}/queue/join` with the inputs, the endpoint's `fn_index` and a `session_hash`;
then GET `{api_prefix}/queue/data?session_hash=...`, a chunked `text/event-stream` of JSON
messages: `estimation`, `process_starts`, `process_generating` (the first carries the whole
output, later ones diffs such as `[["append", [], "abc"]]`), `process_completed`,
`heartbeat`. Raw HTTP/1.1 over asyncio streams, so the client costs little CPU next to the
server it measures.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from common import ROOT


@dataclass
class Stream:
    """What one request saw: times are seconds since the request was sent."""
    text: str = ""
    first_char: float | None = None   # time to first character
    done: float | None = None         # time of process_completed
    updates: list[float] = field(default_factory=list)  # times of process_generating
    error: str | None = None


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def _post_json(host: str, port: int, path: str, payload: dict) -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        body = json.dumps(payload).encode()
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        status, headers = await _read_head(reader)
        data = await reader.readexactly(int(headers.get("content-length", 0)))
        return status, (json.loads(data) if data else {})
    finally:
        writer.close()


async def _sse_messages(reader: asyncio.StreamReader):
    """Yield the JSON messages of a chunked event stream."""
    buffer = b""
    while True:
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            return
        buffer += await reader.readexactly(size)
        await reader.readexactly(2)  # the CRLF after each chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if event.startswith(b"data:"):
                yield json.loads(event[5:])


def _apply(text: str, value) -> str:
    """The reply after one `process_generating` output value (whole string or diffs)."""
    if isinstance(value, str):
        return value
    for action, path, part in value or []:
        if path:
            raise ValueError(f"unexpected diff path {path!r}")
        text = text + part if action == "append" else part
    return text


async def stream_chat(host: str, port: int, api_prefix: str, fn_index: int, inputs: list,
                      timeout: float = 120.0, session_hash: str | None = None) -> Stream:
    """Send one request to the event `fn_index` and read its stream to the end. Requests
    with the same `session_hash` share a visitor's state (a new one each call by default)."""
    session_hash = session_hash or new_session_hash()
    result, start = Stream(), time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            status, reply = await _post_json(host, port, f"{api_prefix}/queue/join", {
                "data": inputs, "fn_index": fn_index, "session_hash": session_hash,
                "event_data": None, "trigger_id": None})
            if status != 200:
                result.error = f"queue/join HTTP {status}: {str(reply)[:120]}"
                return result
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {api_prefix}/queue/data?session_hash={session_hash} HTTP/1.1\r\n"
                         f"Host: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
            await writer.drain()
            status, _ = await _read_head(reader)
            if status != 200:
                result.error = f"queue/data HTTP {status}"
                return result
            async for msg in _sse_messages(reader):
                now = time.perf_counter() - start
                if msg.get("msg") == "process_generating":
                    result.text = _apply(result.text, msg["output"]["data"][0])
                    result.updates.append(now)
                    if result.first_char is None and result.text:
                        result.first_char = now
                elif msg.get("msg") == "process_completed":
                    result.done = now
                    if not msg.get("success", True):
                        result.error = f"failed: {str(msg.get('output'))[:120]}"
                    return result
            result.error = "stream closed before the reply completed"
    except TimeoutError:
        result.error = f"timed out after {timeout:.0f} s"
    except (OSError, ValueError, asyncio.IncompleteReadError) as e:
        result.error = f"{type(e).__name__}: {e}"
    finally:
        if writer is not None:
            writer.close()
    return result


def new_session_hash() -> str:
    return uuid.uuid4().hex[:12]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_config(port: int, timeout: float = 1.0) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=timeout) as r:
        return json.load(r)


def endpoint(config: dict, api_name: str = "chat") -> tuple[str, int]:
    """(api_prefix, fn_index) of the app's API endpoint `/{api_name}`."""
    for dep in config["dependencies"]:
        if dep.get("api_name") == api_name:
            return config.get("api_prefix", ""), dep["id"]
    raise SystemExit(f"the app has no /{api_name} endpoint")


def chat_endpoint(config: dict) -> tuple[str, int]:
    """(api_prefix, fn_index) of the app's `/chat` API."""
    return endpoint(config, "chat")


def start_app(port: int, app: str | os.PathLike = ROOT / "app.py",
              **env: str) -> subprocess.Popen:
    """`python app.py` on `port` (with extra environment variables `env`), its output
    discarded."""
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", **env}
    app = Path(app).resolve()
    return subprocess.Popen([sys.executable, str(app)], cwd=app.parent, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 60.0) -> dict:
    """Poll /config until the app answers; its config."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited with code {proc.returncode} before serving")
        try:
            return get_config(port)
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"app.py did not answer on port {port} within {timeout:.0f} s")


def connect_app(port: int = 0, server_pid: int = 0, app: str | os.PathLike = ROOT / "app.py",
                **env: str) -> tuple[int, psutil.Process, subprocess.Popen | None, dict]:
    """A running app on `port` (its process `server_pid`), or a fresh one started on a free
    port: (port, server process, the Popen to stop or None, its config)."""
    if port:
        return port, psutil.Process(server_pid or None), None, get_config(port)
    port = free_port()
    proc = start_app(port, app, **env)
    config = wait_ready(proc, port)
    return port, psutil.Process(proc.pid), proc, config


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
