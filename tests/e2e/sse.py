"""Test helpers for the widget's event stream: a real HTTP server in a thread and a Server-Sent Events reader."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx


@contextmanager
def serve_http(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free 127.0.0.1 port (the TestClient cannot hold a stream open)."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from app.cli import SHUTDOWN_GRACE_S

    # The product's grace: open streams are cancelled and the app's lifespan shutdown joins its threads, so
    # nothing this server started outlives the test (it would use the next test's settings and database).
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=SHUTDOWN_GRACE_S))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "uvicorn did not shut down"


@dataclass
class Event:
    event: str
    data: Any
    id: str | None


class EventStream:
    """Reads an SSE response in a background thread; `next()` hands out the events in order."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self._client = httpx.Client(timeout=httpx.Timeout(10, read=None))
        self._request = self._client.build_request("GET", url, headers=headers)
        self._events: queue.Queue[Event | BaseException] = queue.Queue()
        self.status: int | None = None
        self._response: httpx.Response | None = None
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> EventStream:
        self._thread.start()
        assert self._opened.wait(30), "the event stream did not answer"
        return self

    def __exit__(self, *exc: object) -> None:
        # Hang up as a closing browser tab does. Closing the client alone would leave the reader blocked in
        # recv() on a connection the server keeps streaming on, past the end of the test.
        if self._response is not None:
            sock = self._response.extensions["network_stream"].get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._client.close()
        assert not self._thread.is_alive(), "the event stream reader did not stop"

    def _read(self) -> None:
        try:
            response = self._response = self._client.send(self._request, stream=True)
            self.status = response.status_code
            self._opened.set()
            if response.status_code != 200:
                response.read()
                self._events.put(Event("http-error", response.json(), None))
                return
            kind, data, event_id = "message", [], None
            for line in response.iter_lines():
                if line == "":
                    if data:
                        self._events.put(Event(kind, json.loads("\n".join(data)), event_id))
                    kind, data, event_id = "message", [], None
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif line.startswith("id:"):
                    event_id = line[3:].strip()
        except BaseException as exc:  # the test closed the stream, or it broke: next() reports it
            self._opened.set()
            self._events.put(exc)

    def next(self, kind: str | None = None, timeout: float = 60) -> Event:
        """The next event (skipping none); fails if it is not of `kind` or nothing arrives within `timeout`."""
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout}s") from None
        if isinstance(item, BaseException):
            raise AssertionError(f"the stream ended: {item!r}")
        if kind is not None:
            assert item.event == kind, item
        return item
