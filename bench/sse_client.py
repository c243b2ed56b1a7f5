"""A light asyncio client for one streaming Gradio event: the one client for bench/ and tests/.

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
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field


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


async def _post_json(host: str, port: int, path: str, payload: dict,
                     source: str | None = None) -> tuple[int, dict | str]:
    reader, writer = await asyncio.open_connection(host, port,
                                                   local_addr=(source, 0) if source else None)
    try:
        body = json.dumps(payload).encode()   # NaN and infinities as JavaScript writes them
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        status, headers = await _read_head(reader)
        data = await reader.readexactly(int(headers.get("content-length", 0)))
        try:
            return status, (json.loads(data) if data else {})
        except ValueError:
            return status, data.decode(errors="replace")
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


async def events(host: str, port: int, api_prefix: str, fn_index: int, inputs: list,
                 session_hash: str | None = None, source: str | None = None):
    """Send one request to the event `fn_index` and yield its messages (dicts) up to and with
    `process_completed`. A refused join yields {"msg": "rejected", "status", "detail"} and
    ends. Requests with the same `session_hash` share a visitor's state (a new one by default);
    `source`: the local address to send from (127.0.0.2: another visitor)."""
    session_hash = session_hash or new_session_hash()
    status, reply = await _post_json(host, port, f"{api_prefix}/queue/join", {
        "data": inputs, "fn_index": fn_index, "session_hash": session_hash,
        "event_data": None, "trigger_id": None}, source)
    if status != 200:
        yield {"msg": "rejected", "status": status, "detail": reply}
        return
    reader, writer = await asyncio.open_connection(host, port,
                                                   local_addr=(source, 0) if source else None)
    try:
        writer.write(f"GET {api_prefix}/queue/data?session_hash={session_hash} HTTP/1.1\r\n"
                     f"Host: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        status, _ = await _read_head(reader)
        if status != 200:
            yield {"msg": "rejected", "status": status, "detail": "queue/data"}
            return
        async for msg in _sse_messages(reader):
            yield msg
            if msg.get("msg") == "process_completed":
                return
    finally:
        writer.close()


async def call(host: str, port: int, api_prefix: str, fn_index: int, inputs: list,
               timeout: float = 60.0, source: str | None = None) -> list[dict]:
    """One request's messages, all of them (see `events`)."""
    async with asyncio.timeout(timeout), \
            aclosing(events(host, port, api_prefix, fn_index, inputs, source=source)) as stream:
        return [msg async for msg in stream]


async def stream_chat(host: str, port: int, api_prefix: str, fn_index: int, inputs: list,
                      timeout: float = 120.0, session_hash: str | None = None) -> Stream:
    """Send one request to the event `fn_index` and read its stream to the end, timing it."""
    result, start = Stream(), time.perf_counter()
    try:
        async with asyncio.timeout(timeout), \
                aclosing(events(host, port, api_prefix, fn_index, inputs, session_hash)) as stream:
            async for msg in stream:
                now = time.perf_counter() - start
                if msg.get("msg") == "rejected":
                    result.error = f"rejected: HTTP {msg['status']}: {str(msg['detail'])[:120]}"
                    return result
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
    return result


def new_session_hash() -> str:
    return uuid.uuid4().hex[:12]


def endpoint(config: dict, api_name: str = "chat") -> tuple[str, int]:
    """(api_prefix, fn_index) of the app's API endpoint `/{api_name}`."""
    for dep in config["dependencies"]:
        if dep.get("api_name") == api_name:
            return config.get("api_prefix", ""), dep["id"]
    raise SystemExit(f"the app has no /{api_name} endpoint")


def chat_endpoint(config: dict) -> tuple[str, int]:
    """(api_prefix, fn_index) of the app's `/chat` API."""
    return endpoint(config, "chat")
