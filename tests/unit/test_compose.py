"""docker-compose.yml stays well formed: parsed as YAML, every build context and
bind-mounted file exists, no port published on all interfaces."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def compose() -> dict[str, object]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_every_service_builds_from_an_existing_context_or_names_an_image() -> None:
    services = compose()["services"]
    assert isinstance(services, dict) and services
    for name, service in services.items():
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            assert (REPO / context / "Dockerfile").is_file(), name
        else:
            assert "image" in service, name


def test_bind_mounts_point_at_existing_or_generated_paths() -> None:
    generated = {"results"}  # created by swaplab at run time, git-ignored
    for service in compose()["services"].values():  # type: ignore[attr-defined]
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                path = (REPO / source).resolve()
                assert path.exists() or path.name in generated, source


def test_no_port_is_published_on_all_interfaces() -> None:
    for service in compose()["services"].values():  # type: ignore[attr-defined]
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port


def test_a_real_compose_implementation_accepts_the_file() -> None:
    # Debian's docker-compose parses and validates without a Docker engine.
    env = {**os.environ, "SWAPLAB_REDIS_PASSWORD": "test-only"}
    proc = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr


def test_compose_refuses_to_start_redis_without_a_password() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SWAPLAB_REDIS_PASSWORD"}
    proc = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode != 0 and "SWAPLAB_REDIS_PASSWORD" in proc.stderr
