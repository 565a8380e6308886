"""The house by role: every import in service/ points down its layers, and none goes round.

    app, main, __main__, dev      the composition root and the local tools
    api                           the HTTP edge
    worker                        push handling and result delivery
    engine                        flows, expressions, the runner, calls out (and the small
                                  protocols it needs of a store: no backend imported)
    backends                      the store and the broker
    ground                        settings, errors, the execution model, messages, ...

Imports under TYPE_CHECKING count too: they are the same arrow for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parent.parent / "service"
LAYERS = ["ground", "backends", "engine", "worker", "api", "root"]


def module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in {"backends", "engine", "worker", "api"}:
        return parts[1]
    if len(parts) > 1 and parts[1] in {"app", "main", "__main__", "dev"}:
        return "root"
    return "root" if module == "service" else "ground"


def imports() -> dict[str, set[str]]:
    """Each module of service/ and the modules of service/ it imports."""
    found: dict[str, set[str]] = {}
    for path in SERVICE.rglob("*.py"):
        module = module_name(path)
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "service":  # from service import x: x is a module
                    targets |= {f"service.{alias.name}" for alias in node.names}
                elif node.module.startswith("service."):
                    targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("service.")}
        found[module] = targets
    return found


def test_every_import_points_down_the_layers() -> None:
    upward = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in imports().items()
        for target in targets
        if LAYERS.index(layer(target)) > LAYERS.index(layer(module))
    ]
    assert upward == []


def test_no_import_goes_round() -> None:
    graph = imports()
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                circles.append([*path[path.index(target) :], target])
            elif target in graph and target not in done:
                visit(target, [*path, target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert circles == []


def test_the_layers_are_what_the_docstring_draws() -> None:
    """A module in no package of the picture would escape the rules: each is placed."""
    placed = {layer(module) for module in imports()}
    assert placed == set(LAYERS)


def test_the_engine_depends_on_protocols_of_its_own_not_on_the_backends() -> None:
    """The engine declares what it needs (an answer store, share leases); the backends
    implement it. Nothing under service/engine imports service.backends."""
    reaching = [
        f"{module} imports {target}"
        for module, targets in imports().items()
        if layer(module) == "engine"
        for target in targets
        if layer(target) == "backends"
    ]
    assert reaching == []
