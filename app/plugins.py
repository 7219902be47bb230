"""How the edges (gateways/, workers/) join the process without the core importing them.

Each edge package names a `register(plugins)` function under the `switchboard.plugins` entry-point group in
pyproject.toml; `load()` calls them all. What they add: channel specs (with their senders), HTTP routers, the
ingestion job queue, process roles (`switchboard orchestrator`, `worker`, `gateway`) and CLI sub-commands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import APIRouter
    from typer import Typer

    from app.bootstrap import Container
    from app.channels import ChannelSpec
    from app.jobs import JobQueue

GROUP = "switchboard.plugins"


@dataclass
class Plugins:
    # Each builds its channel specs (with their senders) for a container: app/bootstrap.py `Container.channels`.
    channels: list[Callable[[Container], Iterable[ChannelSpec]]] = field(default_factory=list)
    # HTTP routes per channel (the widget and USSD too): `serve` mounts them all, `gateway CHANNEL` one.
    routers: dict[str, Callable[[], APIRouter]] = field(default_factory=dict)
    job_queue: Callable[[Container], JobQueue] | None = None
    # Process roles by command name (`orchestrator`, `worker`, `gateway`): each gets the command's arguments.
    roles: dict[str, Callable[..., Any]] = field(default_factory=dict)
    cli: list[tuple[str, Typer]] = field(default_factory=list)


def load() -> Plugins:
    plugins = Plugins()
    found = sorted(entry_points(group=GROUP), key=lambda ep: ep.name)
    if not found:
        raise RuntimeError(f"no {GROUP} entry points are installed: run `pip install -e .` in the repository")
    for ep in found:
        ep.load()(plugins)
    return plugins
