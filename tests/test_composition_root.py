"""The composition root (app/bootstrap.py) is the only way in: the process's container is looked up only by the
entry points below, and every other module is handed the services it uses (request handlers through
`app.api.services.Services`, consumers and jobs through their constructors)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "gateways", "workers")

# The modules that may call `bootstrap.container()`: each builds a process (or a command's) object graph once.
ENTRY_POINTS = {
    "app/bootstrap.py",  # defines it
    "app/main.py",  # create_app() without a container of its own: the process's
    "app/cli.py",  # `switchboard ...` commands
    "app/operator_cli.py",  # `switchboard tenant|guard|retention|contact|keys`
    "app/knowledge/cli.py",  # `switchboard pack|eval ...` commands
    "gateways/cli.py",  # `switchboard channel ...` commands
    "gateways/server.py",  # `switchboard gateway CHANNEL`
    "workers/orchestrator.py",  # `switchboard orchestrator`
    "workers/ingest.py",  # `run_queued_job`, what an RQ worker (`switchboard worker`) runs
}


def container_lookups(tree: ast.AST) -> list[int]:
    """Lines that call the process's container: `container()`, `bootstrap.container()`, or an alias of it
    imported from app.bootstrap."""
    names = {"container"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "app.bootstrap":
            names.update(alias.asname or alias.name for alias in node.names if alias.name == "container")
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and not node.args and not node.keywords:
            func = node.func
            if (isinstance(func, ast.Name) and func.id in names) or (
                    isinstance(func, ast.Attribute) and func.attr == "container"
                    and isinstance(func.value, ast.Name) and func.value.id == "bootstrap"):
                lines.append(node.lineno)
    return sorted(lines)


def test_only_entry_points_look_the_container_up() -> None:
    offences = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = path.relative_to(REPO).as_posix()
            if name in ENTRY_POINTS:
                continue
            offences += [f"{name}:{line}" for line in container_lookups(ast.parse(path.read_text(), name))]
    assert offences == [], ("only entry points look the process's container up; hand these their services "
                            "(Services in a route, a constructor argument elsewhere):\n" + "\n".join(offences))


def test_every_allowed_entry_point_still_exists() -> None:
    assert sorted(p for p in ENTRY_POINTS if not (REPO / p).is_file()) == []


def test_the_lookup_finder_finds_each_spelling() -> None:
    source = ("from app import bootstrap\nfrom app.bootstrap import container as current\n"
              "bootstrap.container().bus\ncurrent()\ncontainer()\nservices.container\nbuild(container)\n")
    assert container_lookups(ast.parse(source)) == [3, 4, 5]


def test_no_module_keeps_a_runtime_getter_layer() -> None:
    """app/runtime.py (getters over the container) is gone; nothing imports it again."""
    assert not (REPO / "app" / "runtime.py").exists()
    importers = [p.relative_to(REPO).as_posix() for package in (*PACKAGES, "tests", "benchmarks")
                 for p in (REPO / package).rglob("*.py") if "app.runtime" in p.read_text()
                 and p.name != "test_composition_root.py"]
    assert importers == []
