"""docker-compose.yml stays well formed: parsed as YAML, every build context and
bind-mounted file exists, no port published on all interfaces, every long-running service
health-checked, the monitoring services mount their provisioning from the repo."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import make_url

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
# What `docker-compose config` needs besides the environment it runs in.
PASSWORDS = {
    "SWAPLAB_REDIS_PASSWORD": "test-only",
    "SWAPLAB_GRAFANA_PASSWORD": "test-only",
    "SWAPLAB_DB_PASSWORD": "test-only-db",
}


def compose() -> dict[str, object]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    data = compose()["services"]
    assert isinstance(data, dict) and data
    return data


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of the service's bind mounts, short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type", "volume") != "bind":
                continue
            source, target = str(volume["source"]), str(volume["target"])
            read_only = bool(volume.get("read_only", False))
        else:
            parts = str(volume).split(":")
            if len(parts) < 2:
                continue  # an anonymous volume
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        if source.startswith((".", "/", "~")):
            mounts.append((source, target, read_only))
    return mounts


def run_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
    )


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
    for name, service in services().items():
        for source, _, _ in bind_mounts(service):
            path = (REPO / source).resolve()
            assert path.is_relative_to(REPO), f"{name}: {source} is outside the repo"
            if path.is_relative_to(REPO / "deploy"):
                assert path.exists(), f"{name}: {source} is missing from deploy/"
            else:
                assert path.exists() or path.name in generated, f"{name}: {source}"


def test_the_bind_mount_parser_reads_both_syntaxes() -> None:
    service = {
        "volumes": [
            "data:/data",
            "./a:/a:ro",
            "./b:/b",
            {"type": "bind", "source": "./c", "target": "/c", "read_only": True},
            {"type": "volume", "source": "data", "target": "/d"},
        ]
    }
    assert bind_mounts(service) == [("./a", "/a", True), ("./b", "/b", False), ("./c", "/c", True)]


def test_no_port_is_published_on_all_interfaces() -> None:
    for service in services().values():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # long syntax
                assert port.get("host_ip") == "127.0.0.1", port
                continue
            assert str(port).startswith("127.0.0.1:"), port


def test_the_redis_service_publishes_no_port() -> None:
    redis = services()["redis"]
    assert "ports" not in redis and redis.get("network_mode") != "host"


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in services().items():
        if service.get("profiles"):
            continue  # one-shot (cli): `docker compose run`, nothing to watch
        healthcheck = service.get("healthcheck")
        assert isinstance(healthcheck, dict) and healthcheck.get("test"), name
        assert not healthcheck.get("disable"), name


def test_the_worker_exports_metrics_inside_the_compose_network_only() -> None:
    worker = services()["worker"]
    env = worker["environment"]
    assert env["SWAPLAB_METRICS_ADDR"] == "0.0.0.0"
    assert str(env["SWAPLAB_METRICS_PORT"]) == "9464"
    assert env["SWAPLAB_PROMETHEUS_URL"] == "http://prometheus:9090"
    assert services()["cli"]["environment"]["SWAPLAB_PROMETHEUS_URL"] == "http://prometheus:9090"
    assert "ports" not in worker
    assert "EXPOSE 9464 5555" in (REPO / "Dockerfile").read_text()


def test_prometheus_and_grafana_mount_their_provisioning_read_only() -> None:
    prometheus = {target: (source, ro) for source, target, ro in bind_mounts(services()["prometheus"])}
    assert prometheus["/etc/prometheus/prometheus.yml"] == ("./deploy/prometheus/prometheus.yml", True)
    assert prometheus["/etc/prometheus/rules"] == ("./deploy/prometheus/rules", True)
    grafana = {target: (source, ro) for source, target, ro in bind_mounts(services()["grafana"])}
    assert grafana["/etc/grafana/provisioning"] == ("./deploy/grafana/provisioning", True)
    assert grafana["/var/lib/grafana/dashboards"] == ("./deploy/grafana/dashboards", True)
    # The dashboard provider loads from where the dashboards are mounted.
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/swaplab.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_a_real_compose_implementation_accepts_the_file() -> None:
    # Debian's docker-compose parses and validates without a Docker engine.
    proc = run_config({**os.environ, **PASSWORDS})
    assert proc.returncode == 0, proc.stderr


def test_compose_refuses_to_start_redis_without_a_password() -> None:
    env = {k: v for k, v in {**os.environ, **PASSWORDS}.items() if k != "SWAPLAB_REDIS_PASSWORD"}
    proc = run_config(env)
    assert proc.returncode != 0 and "SWAPLAB_REDIS_PASSWORD" in proc.stderr


def test_compose_refuses_to_start_grafana_without_an_admin_password() -> None:
    env = {k: v for k, v in {**os.environ, **PASSWORDS}.items() if k != "SWAPLAB_GRAFANA_PASSWORD"}
    proc = run_config(env)
    assert proc.returncode != 0 and "SWAPLAB_GRAFANA_PASSWORD" in proc.stderr


def test_compose_refuses_to_start_postgres_without_a_password() -> None:
    env = {k: v for k, v in {**os.environ, **PASSWORDS}.items() if k != "SWAPLAB_DB_PASSWORD"}
    proc = run_config(env)
    assert proc.returncode != 0 and "SWAPLAB_DB_PASSWORD" in proc.stderr


def test_the_postgres_service_is_private_persistent_and_health_checked() -> None:
    postgres = services()["postgres"]
    assert str(postgres["image"]).startswith("postgres:")
    assert "ports" not in postgres and postgres.get("network_mode") != "host"
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    volumes = compose()["volumes"]
    assert isinstance(volumes, dict) and "postgres-data" in volumes
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]


def test_every_service_running_swaplab_reaches_the_results_database() -> None:
    """The URL each swaplab service gets, as compose resolves it, names the postgres service."""
    proc = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env={**os.environ, **PASSWORDS},
        check=True,
    )
    resolved = yaml.safe_load(proc.stdout)["services"]
    postgres_env = resolved["postgres"]["environment"]
    swaplab = [name for name, service in services().items() if service.get("image") == "swaplab:latest"]
    assert {"worker", "beat", "cli", "flower"} <= set(swaplab)
    for name in swaplab:
        url = make_url(resolved[name]["environment"]["SWAPLAB_DB_URL"])
        assert url.drivername == "postgresql+psycopg", name
        assert (url.host, url.port, url.username, url.database) == ("postgres", 5432, "swaplab", "swaplab"), name
        assert url.password == PASSWORDS["SWAPLAB_DB_PASSWORD"] == postgres_env["POSTGRES_PASSWORD"], name
        assert (postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_DB"]) == (url.username, url.database)
    for name in ("worker", "cli"):  # the services that store and read the history wait for it
        assert services()[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_the_redis_service_takes_its_password_without_showing_it(tmp_path: Path) -> None:
    """The service's own command, run with a real redis-server: auth required, no password in argv."""
    argv = [part.replace("$$", "$") for part in services()["redis"]["command"]]
    port = free_port()
    argv[-1] += f" --port {port} --bind 127.0.0.1 --dir {tmp_path} --appendonly no"
    password = "s3cret-compose-password"
    # Its own process group: the command is `sh -c "printf … | exec redis-server …"`, and the
    # redis-server of that pipeline is not the shell, so only the group's end ends it.
    server = subprocess.Popen(
        argv, env={**os.environ, "SWAPLAB_REDIS_PASSWORD": password}, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        probe = ["redis-cli", "-h", "127.0.0.1", "-p", str(port)]
        deadline = time.monotonic() + 10
        while "NOAUTH" not in (answer := subprocess.run([*probe, "get", "x"], capture_output=True, text=True)).stdout:
            assert time.monotonic() < deadline, answer
            time.sleep(0.1)
        authed = subprocess.run([*probe, "ping"], env={**os.environ, "REDISCLI_AUTH": password}, capture_output=True, text=True)
        assert authed.stdout.strip() == "PONG"
        assert password not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
