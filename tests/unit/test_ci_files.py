"""The GitHub workflow (.github/workflows/ci.yml) is a valid workflow that runs what .ci/run and
the README run: the Makefile's targets, against service containers of the images
docker-compose.yml runs, each with a health check, on the Pythons the project supports."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlsplit

import pytest
from jsonschema.validators import validator_for

from app.plumbing.settings import Settings
from tests.support.projectfiles import (
    CI_RUN,
    COMPOSE,
    WORKFLOW,
    load_yaml,
    make_commands,
    makefile_targets,
    python_floor,
    vendored_schema,
)

SERVICES = {"postgres", "rabbitmq", "mongo"}
URL_SERVICES = {"DATABASE_URL": "postgres", "AMQP_URL": "rabbitmq", "MONGO_URL": "mongo"}


def _workflow() -> dict[str, Any]:
    return load_yaml(WORKFLOW)


def _job(name: str) -> dict[str, Any]:
    job: dict[str, Any] = _workflow()["jobs"][name]
    return job


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def _errors(workflow: dict[str, Any]) -> list[str]:
    schema = vendored_schema("github-workflows")
    validator = validator_for(schema)(schema)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(workflow)]


def test_the_workflow_is_valid_against_the_github_workflow_schema() -> None:
    workflow = _workflow()
    assert _errors(workflow) == []
    broken = {**workflow, "jobs": {"test": {**_job("test"), "runs-on": None, "stepz": []}}}
    assert _errors(broken) != []


def test_it_runs_on_pushes_and_pull_requests() -> None:
    assert {"push", "pull_request"} <= set(_workflow()["on"])


def test_the_services_are_compose_s_images_each_with_a_health_check() -> None:
    services = _job("test")["services"]
    compose = load_yaml(COMPOSE)["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service["image"] == compose[name]["image"], name
        assert "--health-cmd" in service["options"], name
        assert "healthcheck" in compose[name], name


def test_the_service_urls_are_settings_and_reach_the_published_ports() -> None:
    job = _job("test")
    env = job["env"]
    fields = {field.name.upper() for field in dataclasses.fields(Settings)}
    assert set(URL_SERVICES) <= set(env)
    assert set(URL_SERVICES) <= fields
    Settings.from_env({k: v for k, v in env.items() if k in fields})
    for variable, service in URL_SERVICES.items():
        port = urlsplit(env[variable]).port
        published = {int(p.split(":")[0]) for p in job["services"][service]["ports"]}
        assert port in published, variable


def test_the_matrix_covers_the_lowest_and_the_newest_supported_python() -> None:
    matrix = _job("test")["strategy"]["matrix"]["python"]
    assert matrix == ["3.11", "3.13"]
    assert min(matrix, key=lambda v: tuple(map(int, v.split(".")))) == python_floor()


def test_it_runs_the_same_make_targets_as_ci_run() -> None:
    in_workflow = make_commands(_runs(_job("test")))
    in_ci_run = make_commands(CI_RUN.read_text())
    assert in_workflow == in_ci_run == ["make install", "make check", "make test"]
    assert {command.split()[1] for command in in_workflow} <= makefile_targets()


@pytest.mark.parametrize("script", ["workflow", "ci_run"])
def test_the_node_example_is_installed_before_the_tests(script: str) -> None:
    text = _runs(_job("test")) if script == "workflow" else CI_RUN.read_text()
    install = text.index("npm ci --prefix examples/node-consumer")
    assert install < text.index("make test")


def test_a_job_builds_the_image() -> None:
    assert "docker build" in _runs(_job("image"))
