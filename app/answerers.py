"""Answering processes for embedded `serve`: customers' questions answered on every core.

One process answers under one GIL, ~15 ms of Python per message (docs/benchmarks.md), so embedded `serve` tops out
near one core however many customers wait. In scale-out, replicas of `switchboard orchestrator` share the work
through Redis. Embedded mode has no servers: four things exist only in `serve`'s process, the in-process bus, the
widget's push hub, the qdrant-edge folder (locked to one process) and the in-memory rate limits. So `serve` lends
them: it runs a `multiprocessing.managers` server on a Unix socket in a private folder (and an authentication key
the children receive on their stdin), and ANSWER_PROCESSES children (`python -m app.answerers`) each build their
own container (database, embedder, LLM client, retriever, grounding check) with those four as proxies, and run the
orchestrator's consumer in the same consumer group, as scale-out replicas do. SQLite takes every process's writes
in turn (app/sqlite_writes.py). `serve` then answers nothing itself: its GIL stays with HTTP, the gateways,
delivery and the review side.

Nothing is lost when a child dies: what it held stays pending on the bus, and another child claims it after
BUS_CLAIM_IDLE_MS (the bus's at-least-once contract); `serve` starts a new child in its place. A child whose
`serve` is gone stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from app.bootstrap import Container

log = logging.getLogger(__name__)

# The services a child uses through `serve`: the four above, and the grounding check's passage units, so a
# passage cited first in one process is not embedded again in every other (~0.1-0.5 s of model time each).
LENT = ("bus", "push", "vector_store", "rate_limiter", "passage_cache")
RESTART_AFTER_S = 2.0  # a child that died is replaced after this pause (a child failing at start-up does not spin)
STOP_WAIT_S = 15.0  # on shutdown a child finishes the messages it holds for this long, then is killed


class _Lender(BaseManager):
    pass


@dataclass
class Invitation:
    """What a child needs to join: where the lender listens, its key, and `serve`'s settings as values (so a child
    answers with exactly the parent's configuration, whatever built it). Sent pickled on the child's stdin."""

    address: str
    authkey: bytes
    settings: dict[str, Any]
    parent_pid: int


@dataclass
class AnswerProcesses:
    """The lender's server (threads of `serve`) and the children it supervises."""

    container: Container
    folder: Path  # private (0700): holds the lender's socket
    authkey: bytes
    server: Any  # multiprocessing.managers.Server (its stop_event and listener are not in the type stubs)
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)  # the lender takes no more connections
    _supervisor: threading.Thread | None = None
    _acceptor: threading.Thread | None = None

    @classmethod
    def start(cls, container: Container, count: int) -> AnswerProcesses:
        folder = Path(tempfile.mkdtemp(prefix="switchboard-answerers-"))  # 0700: only this user reaches the socket
        authkey = secrets.token_bytes(32)
        services = {name: getattr(container, name) for name in LENT}  # built here, before any child asks
        manager = _Lender(address=_address(folder), authkey=authkey)
        for name, service in services.items():
            # Never `close`: a child closing its container must not close `serve`'s bus, push hub or store.
            exposed = [method for method in dir(service) if not method.startswith("_") and method != "close"
                       and callable(getattr(service, method))]
            manager.register(name, callable=lambda service=service: service, exposed=exposed)
        server: Any = manager.get_server()
        server.stop_event = threading.Event()  # what `serve_forever` would set up; its client threads check it
        lent = cls(container, folder, authkey, server)
        lent._acceptor = threading.Thread(target=lent._accept, name="sb-lender", daemon=True)
        lent._acceptor.start()
        lent.children = [lent._spawn(i) for i in range(count)]
        lent._supervisor = threading.Thread(target=lent._supervise, name="sb-answerers", daemon=True)
        lent._supervisor.start()
        log.info("answering in %d process(es): %s", count, ", ".join(str(c.pid) for c in lent.children))
        return lent

    def _accept(self) -> None:
        """The manager server's accept loop, ending when `stop` closes the listener (the server's own `accepter`
        would retry a closed listener forever)."""
        while not self.closed.is_set():
            try:
                connection = self.server.listener.accept()
            except Exception:  # noqa: S112 - a client that failed authentication or hung up, or `stop`'s wake-up
                continue
            threading.Thread(target=self.server.handle_request, args=(connection,), daemon=True).start()

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        child = subprocess.Popen([sys.executable, "-m", "app.answerers", str(index)],  # noqa: S603 - our own module
                                 stdin=subprocess.PIPE)
        invitation = Invitation(_address(self.folder), self.authkey, self.container.settings.model_dump(), os.getpid())
        assert child.stdin is not None
        try:
            child.stdin.write(pickle.dumps(invitation))
            child.stdin.close()
        except BrokenPipeError:  # it died at once (its error is on stderr); the supervisor starts another
            pass
        return child

    def _supervise(self) -> None:
        while not self.stopping.wait(RESTART_AFTER_S):
            for index, child in enumerate(self.children):
                if child.poll() is not None and not self.stopping.is_set():
                    log.warning("answering process %d (pid %d) exited with %s; starting another (what it held is "
                                "claimed by the others after BUS_CLAIM_IDLE_MS)", index, child.pid, child.returncode)
                    self.children[index] = self._spawn(index)

    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def stop(self) -> None:
        """Children finish what they hold (SIGTERM), then the lender closes."""
        self.stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + STOP_WAIT_S
        for child in self.children:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("answering process %d did not stop in %.0f s; killed", child.pid, STOP_WAIT_S)
                child.kill()
                child.wait()
        self.closed.set()
        self.server.stop_event.set()
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as wake:  # closing does not end `accept`
            wake.connect(_address(self.folder))
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        self.server.listener.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _address(folder: Path) -> str:
    return str(folder / "lender.sock")


def join(invitation: Invitation) -> Container:
    """The child's container: its own database, models and LLM client; `serve`'s bus, push, vectors and limits."""
    from app import bootstrap
    from app.config import Settings

    manager = _Lender(address=invitation.address, authkey=invitation.authkey)
    for name in LENT:
        manager.register(name)
    manager.connect()
    lent = {name: getattr(manager, name)() for name in LENT}
    built = bootstrap.Container(Settings(**invitation.settings), **lent)
    bootstrap.install(built)
    return built


def main(index: int) -> None:
    """A child: answer until SIGTERM or until `serve` is gone."""
    import signal

    from app import logs
    from app.cli_support import trace
    from app.workers_runtime import RoleThreads

    invitation = cast(Invitation, pickle.loads(sys.stdin.buffer.read()))  # noqa: S301 - our parent, on a pipe
    container = join(invitation)
    settings = container.settings
    logs.configure(settings.log_format, settings.log_level or logging.WARNING)
    trace("answerer")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    roles = RoleThreads.start_answering(container)  # loads the models first (`warm_up`)
    while not stop.wait(1.0):
        if os.getppid() != invitation.parent_pid:
            log.warning("answering process %d: serve (pid %d) is gone; stopping", index, invitation.parent_pid)
            break
    roles.stop(timeout=STOP_WAIT_S - 2)
    container.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
