"""docker-compose.yml stays well formed: parsed as YAML, every build context and
bind-mounted file exists, no port published on all interfaces, every long-running service
health-checked, the monitoring services mount their provisioning from the repo."""

from __future__ import annotations

import base64
import functools
import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.conftest import free_port, unavailable

REPO = Path(__file__).resolve().parents[2]
# What `docker-compose config` needs besides the environment it runs in.
PASSWORDS = {
    "SWAPLAB_REDIS_PASSWORD": "test-only",
    "SWAPLAB_GRAFANA_PASSWORD": "test-only",
    "SWAPLAB_DB_PASSWORD": "test-only-db",
    "SWAPLAB_FLOWER_PASSWORD": "test-only-flower",
}
# Capabilities that open a way out of a container to code running as root in it.
ESCAPE_CAPABILITIES = {"DAC_READ_SEARCH", "SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE", "ALL"}


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


@pytest.mark.parametrize(
    "password", ["SWAPLAB_REDIS_PASSWORD", "SWAPLAB_GRAFANA_PASSWORD", "SWAPLAB_DB_PASSWORD", "SWAPLAB_FLOWER_PASSWORD"]
)
def test_compose_refuses_to_start_without_each_services_password(password: str) -> None:
    env = {k: v for k, v in {**os.environ, **PASSWORDS}.items() if k != password}
    proc = run_config(env)
    assert proc.returncode != 0 and password in proc.stderr


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
    assert {"worker", "beat", "cli", "flower", "builder"} <= set(swaplab)
    # The builder runs submitters' code: it gets the broker, not the history's password.
    assert "SWAPLAB_DB_URL" not in resolved["builder"]["environment"]
    for name in set(swaplab) - {"builder"}:
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
        authed = subprocess.run(
            [*probe, "ping"], env={**os.environ, "REDISCLI_AUTH": password}, capture_output=True, text=True
        )
        assert authed.stdout.strip() == "PONG"
        assert password not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


# -- Flower behind basic auth ----------------------------------------------------------------


@functools.cache
def resolved_services() -> dict[str, dict[str, Any]]:
    """The services as ``docker-compose config`` resolves them with the test passwords."""
    proc = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env={**os.environ, **PASSWORDS},
        check=True,
    )
    resolved: dict[str, dict[str, Any]] = yaml.safe_load(proc.stdout)["services"]
    return resolved


def test_flower_gets_its_credentials_by_the_environment_not_its_command_line() -> None:
    flower = resolved_services()["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == f"swaplab:{PASSWORDS['SWAPLAB_FLOWER_PASSWORD']}"
    argv = " ".join([*flower["entrypoint"], *flower["command"]])
    assert "auth" not in argv and PASSWORDS["SWAPLAB_FLOWER_PASSWORD"] not in argv
    assert [str(port) for port in services()["flower"]["ports"]] == ["127.0.0.1:5555:5555"]


def _get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, dict(answer.headers)
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers)


def test_the_flower_service_answers_nobody_without_its_password(tmp_path: Path) -> None:
    """The service's own command and environment, with a real Flower and redis-server: a
    request without the password (a local user, a web page in a local browser) is refused."""
    if importlib.util.find_spec("flower") is None:
        unavailable("flower is not installed (pip install -e '.[stack]')")
    redis_port, flower_port = free_port(), free_port()
    broker = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    service = resolved_services()["flower"]
    env = {**os.environ, **service["environment"], "SWAPLAB_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    argv = [sys.executable, "-m", *service["entrypoint"], *service["command"], "--address=127.0.0.1"]
    argv = [part.replace("5555", str(flower_port)) for part in argv]
    server = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{flower_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health, _ = _get(f"{base}/healthcheck")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "flower did not start"
                time.sleep(0.2)
        assert health == 200  # the compose healthcheck needs no password
        for path in ("/", "/api/workers", "/tasks"):
            status, headers = _get(base + path)
            assert status == 401, path
            assert "Access-Control-Allow-Origin" not in headers  # no page of another origin reads it
            assert _get(base + path, ("swaplab", "guessed"))[0] == 401
        assert _get(f"{base}/", ("swaplab", PASSWORDS["SWAPLAB_FLOWER_PASSWORD"]))[0] == 200
        processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert PASSWORDS["SWAPLAB_FLOWER_PASSWORD"] not in processes
    finally:
        for proc in (server, broker):  # nothing of theirs to keep
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# -- no escape capability next to submitters' code --------------------------------------------


def queues(service: dict[str, Any]) -> set[str]:
    """The queues a Celery worker service consumes (its ``-Q``)."""
    command = [str(part) for part in service.get("command", [])]
    return set(command[command.index("-Q") + 1].split(",")) if "-Q" in command else set()


def test_no_container_that_runs_builds_has_a_capability_to_escape() -> None:
    """ganesha (the lab worker) needs DAC_READ_SEARCH; `build:` kernels run the submitter's
    Makefiles: never both in one container, and nowhere else. The builder holds SYS_ADMIN
    only to make each build's namespaces (workers/kbuild/sandbox.py), which the build itself
    runs without: tests/integration/test_build_sandbox.py shows it capability-less."""
    all_services = services()
    escaping = {name: set(s.get("cap_add", [])) & ESCAPE_CAPABILITIES for name, s in all_services.items()}
    assert {name for name, caps in escaping.items() if caps} == {"worker", "builder"}
    assert escaping["builder"] == {"SYS_ADMIN"} and "DAC_READ_SEARCH" not in escaping["builder"]
    assert not any(s.get("privileged") for s in all_services.values())
    assert "build" not in queues(all_services["worker"])
    builders = {name for name, s in all_services.items() if "build" in queues(s)}
    assert builders == {"builder"}
    builder = all_services["builder"]
    assert "no-new-privileges:true" in builder.get("security_opt", [])
    assert [str(v) for v in builder["volumes"]] == [
        "kbuild-cache:/var/cache/swaplab/kbuild"
    ]  # no keys, images, results
    # Every queue the stack served before is still served.
    assert {"control", "lab.local", "build"} <= set().union(*(queues(s) for s in all_services.values()))
    # The lab worker reads the builder's artifacts from the shared build cache.
    assert "kbuild-cache:/var/cache/swaplab/kbuild" in all_services["worker"]["volumes"]
