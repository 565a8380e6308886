"""requirements.lock (scripts/lock.sh) covers pyproject.toml, and the tests run what it pins."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$", re.M)


def locked() -> dict[str, tuple[Version, str | None]]:
    """Name -> (pinned version, environment marker) of every package in the lock."""
    text = (ROOT / "requirements.lock").read_text()
    return {
        canonicalize_name(name): (Version(version), marker or None)
        for name, version, marker in PIN.findall(text)
    }


def needed() -> list[Requirement]:
    """pyproject's runtime requirements and, through installed metadata, theirs, here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(text) for text in project["dependencies"]]
    seen: set[tuple[str, frozenset[str]]] = set()
    found = []
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        found.append(requirement)
        extras = requirement.extras or {""}
        for text in importlib.metadata.requires(requirement.name) or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return found


def test_every_runtime_requirement_is_locked_at_a_version_it_allows() -> None:
    """Fails when pyproject.toml changed and scripts/lock.sh was not run."""
    pins = locked()
    assert len(pins) > 50
    stale = [
        f"{requirement} (locked: {pins[canonicalize_name(requirement.name)][0]})"
        if canonicalize_name(requirement.name) in pins
        else f"{requirement} (not in the lock)"
        for requirement in needed()
        if canonicalize_name(requirement.name) not in pins
        or not requirement.specifier.contains(
            pins[canonicalize_name(requirement.name)][0], prereleases=True
        )
    ]
    assert stale == [], "run scripts/lock.sh: " + "; ".join(stale)


def test_the_tests_run_the_locked_versions() -> None:
    """.venv installs the lock first (scripts/lib/venv.sh): what is tested is what ships."""
    differing = []
    for name, (version, marker) in locked().items():
        if marker is not None and not Marker(marker).evaluate():
            continue
        installed = Version(importlib.metadata.version(name))
        if installed != version:
            differing.append(f"{name} {installed} (locked {version})")
    assert differing == []
