"""The project's build, CI and deployment files, parsed: what tests/unit/test_ci_files.py and
tests/unit/test_compose_and_image.py compare with each other."""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
MAKEFILE = ROOT / "Makefile"
CI_RUN = ROOT / ".ci" / "run"


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans, as GitHub and Compose read their files:
    only true/false are booleans, so a workflow's `on:` stays the string "on"."""


_BOOL = "tag:yaml.org,2002:bool"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(path.read_text(), Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader
    return loaded


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def python_floor() -> str:
    """The lowest Python the project supports, `3.11` from `requires-python = ">=3.11"`."""
    match = re.fullmatch(r">=\s*(\d+\.\d+)", pyproject()["project"]["requires-python"])
    assert match, "requires-python is expected to read >=X.Y"
    return match.group(1)


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", MAKEFILE.read_text(), flags=re.M))


def make_commands(script: str) -> list[str]:
    """The `make <target>` commands of a shell script, in order (`make check`, ...)."""
    return re.findall(r"^\s*(make [\w-]+)\s*$", script, flags=re.M)


def installed_extras(text: str) -> list[set[str]]:
    """For each `pip install` of the project itself (`.` or `.[a,b]`, quoted or not, possibly
    `--editable`) in a Makefile or Dockerfile, the extras it installs."""
    found = []
    for command in re.split(r"&&|;|\n", text.replace("\\\n", " ")):
        if "pip install" not in command:
            continue
        for word in shlex.split(command.split("pip install", 1)[1]):
            if match := re.fullmatch(r"\.(?:\[([\w,\s-]*)\])?", word):
                found.append({e.strip() for e in (match.group(1) or "").split(",") if e.strip()})
    return found


def vendored_schema(name: str) -> dict[str, Any]:
    """A schema check-jsonschema (PyPI) ships: `compose-spec`, `github-workflows`, ..."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    loaded: dict[str, Any] = json.loads(vendor.joinpath(f"{name}.json").read_text())
    return loaded
