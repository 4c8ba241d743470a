"""Dispatch and start-skew benchmark, without guests: how fast N node tasks reach the run
barrier on a real Celery worker, and how closely they wake at the common ``start_at`` —
beside the same N endpoints started "at once" over SSH with a fabric ThreadingGroup.

    .venv/bin/python bench/dispatch.py [--n 50 200] [--json]

Everything it starts (a redis-server, a Celery worker, N dropbear servers) binds 127.0.0.1
on a free port and is stopped at the end, also on failure. Progress on stderr; figures (or
JSON with ``--json``) on stdout.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import math
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DROPBEAR = "/usr/sbin/dropbear"
DROPBEARKEY = "dropbearkey"
QUEUE = "bench"


# -- small helpers ----------------------------------------------------------------------------
def log(message: str) -> None:
    """Progress goes to stderr so stdout stays machine-readable with --json."""
    print(f"[dispatch] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the kernel picks it; never a well-known one like 6379)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1): an observed value, no interpolation."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def spread_ms(values_ns: Sequence[int]) -> float:
    return (max(values_ns) - min(values_ns)) / 1e6


def lateness_ms(values_ns: Sequence[int], target_ns: int) -> dict[str, float]:
    """How long after ``target_ns`` the endpoints acted: p50, p99, max (ms)."""
    late = [(value - target_ns) / 1e6 for value in values_ns]
    return {"p50_ms": percentile(late, 0.5), "p99_ms": percentile(late, 0.99), "max_ms": max(late), "min_ms": min(late)}


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """Until something accepts on 127.0.0.1:port; fail fast if the server process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g} s")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we created for ``proc`` (its children too), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- Celery: barrier tasks on a real worker -----------------------------------------------------
@contextlib.contextmanager
def celery_lab(tmp: Path, concurrency: int) -> Iterator[Any]:
    """A redis-server and a threads-pool worker on queue ``bench``; yields the Celery app."""
    url = f"unix://{tmp / 'redis' / 'redis.sock'}?db=0"
    # workers.app reads SWAPLAB_REDIS_URL (and the password file) when it is imported, here
    # and in the worker process: set them first, import after (hence the imports below).
    os.environ["SWAPLAB_REDIS_URL"] = url
    os.environ["SWAPLAB_REDIS_PASSWORD_FILE"] = str(tmp / "redis" / "password")
    from orchestrator.services import LocalRedis, LocalWorker

    server = LocalRedis(data_dir=tmp / "redis")
    server.password  # noqa: B018  (generated now, before the Celery app reads it)
    from workers.app import app

    worker = LocalWorker([QUEUE], concurrency, tmp / "worker.log", name="swaplab-bench")
    try:
        log(f"redis-server on {url}, worker -P threads -c {concurrency} (log {tmp / 'worker.log'})")
        server.start()
        worker.start(server.client())
        yield app
    finally:
        worker.stop()
        server.stop()


def barrier_round(app: Any, n: int, lead_s: float, poll_s: float) -> dict[str, Any]:
    """Dispatch ``n`` barrier tasks as one group and measure arrival, throughput and wake-up skew."""
    from celery import group

    from workers.bench_tasks import bench_barrier

    key = f"swaplab:bench:barrier:{n}:{secrets.token_hex(4)}"
    tasks = group(bench_barrier.s(key, n, f"n{i:03d}", lead_s, poll_s).set(queue=QUEUE) for i in range(n))
    dispatched_ns = time.time_ns()
    result = tasks.apply_async()
    published_ns = time.time_ns()
    rows: list[dict[str, int]] = result.get(timeout=300)
    collected_ns = time.time_ns()
    return celery_figures(n, lead_s, poll_s, rows, dispatched_ns, published_ns, collected_ns)


def celery_figures(
    n: int,
    lead_s: float,
    poll_s: float,
    rows: list[dict[str, int]],
    dispatched_ns: int,
    published_ns: int,
    collected_ns: int,
) -> dict[str, Any]:
    start_at = rows[0]["start_at"]
    if any(row["start_at"] != start_at for row in rows):
        raise RuntimeError("parties disagree on start_at")  # the barrier's one promise
    # start_at = Redis TIME at the last arrival + lead (same host, same clock): the instant all arrived.
    all_arrived_ns = start_at - int(lead_s * 1e9)
    to_arrived_s = (all_arrived_ns - dispatched_ns) / 1e9
    woke = [row["woke_ns"] for row in rows]
    return {
        "n": n,
        "lead_s": lead_s,
        "poll_s": poll_s,
        "publish_s": round((published_ns - dispatched_ns) / 1e9, 4),
        "dispatch_to_all_arrived_s": round(to_arrived_s, 4),
        "tasks_per_s": round(n / to_arrived_s, 1),
        "first_arrival_s": round((min(row["arrived_ns"] for row in rows) - dispatched_ns) / 1e9, 4),
        "dispatch_to_results_s": round((collected_ns - dispatched_ns) / 1e9, 4),
        "late_learners": sum(row["learned_ns"] > start_at for row in rows),
        "woke_spread_ms": round(spread_ms(woke), 3),
        "woke_minus_start_at": {k: round(v, 3) for k, v in lateness_ms(woke, start_at).items()},
    }


def run_celery(tmp: Path, sizes: list[int], lead_s: float, poll_s: float) -> list[dict[str, Any]]:
    rounds: list[dict[str, Any]] = []
    with celery_lab(tmp, max(sizes) + 1) as app:
        # Unmeasured warm-up: opens the worker's Redis connections and imports, as in a lab
        # whose worker has been up for a while.
        log(f"warm-up group of {max(sizes)}")
        barrier_round(app, max(sizes), lead_s, poll_s)
        for n in sizes:
            log(f"celery group of {n} barrier tasks")
            rounds.append(barrier_round(app, n, lead_s, poll_s))
    return rounds


# -- SSH: N dropbear endpoints and a fabric ThreadingGroup ---------------------------------------
def client_key(tmp: Path) -> tuple[paramiko.PKey, str]:
    """An ed25519 client key (cryptography), as paramiko key + authorized_keys line."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    path = tmp / "client_ed25519"
    path.write_bytes(pem)
    path.chmod(0o600)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return paramiko.Ed25519Key.from_private_key_file(str(path)), public.decode() + " swaplab-bench\n"


def endpoint_home(tmp: Path, authorized: str) -> Path:
    """A throwaway home with .ssh/authorized_keys (and no .bashrc: no shell start-up cost)."""
    home = tmp / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    home.chmod(0o700)  # dropbear refuses keys under a group/world-writable home
    (home / ".ssh" / "authorized_keys").write_text(authorized)
    (home / ".ssh" / "authorized_keys").chmod(0o600)
    return home


def dropbear_argv(home: Path, host_key: Path, port: int) -> list[str]:
    """dropbear 2022.83 has no option for the authorized_keys path: it reads the user's
    ~/.ssh from passwd. In a private mount namespace we bind the throwaway home over /root
    for this process only — /root itself is never touched."""
    script = 'mount --bind "$1" /root && exec "$2" -F -E -s -p "127.0.0.1:$3" -r "$4"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(home), DROPBEAR, str(port), str(host_key)]  # fmt: skip


@contextlib.contextmanager
def ssh_endpoints(tmp: Path, n: int, authorized: str) -> Iterator[list[int]]:
    """N dropbear servers on 127.0.0.1 free ports; yields their ports, stops them all after."""
    host_key = tmp / "dropbear_ed25519_host_key"
    if not host_key.exists():
        subprocess.run([DROPBEARKEY, "-t", "ed25519", "-f", str(host_key)], check=True, capture_output=True)
    home = tmp / "home" if (tmp / "home").exists() else endpoint_home(tmp, authorized)
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        with (tmp / "dropbear.log").open("ab") as errors:
            for _ in range(n):
                ports.append(free_port())
                argv = dropbear_argv(home, host_key, ports[-1])
                procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                              stderr=errors, start_new_session=True))  # fmt: skip
        for port, proc in zip(ports, procs, strict=True):
            wait_for_port(port, proc)
        yield ports
    finally:
        for proc in procs:
            stop_group(proc)


def open_group(ports: list[int], key: paramiko.PKey) -> Any:
    """A ThreadingGroup with every connection already open (opened 16 at a time)."""
    from fabric import Config, ThreadingGroup

    hosts = [f"root@127.0.0.1:{port}" for port in ports]
    # lazy=True: read no ssh_config / fabric config files, so the figures do not depend on them.
    config = Config(lazy=True)
    connect_kwargs = {"pkey": key, "look_for_keys": False, "allow_agent": False}
    fleet = ThreadingGroup(*hosts, config=config, connect_kwargs=connect_kwargs, connect_timeout=60)
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda conn: conn.open(), fleet))
    return fleet


def printed_ns(results: Any, fields: int) -> list[list[int]]:
    """The integers each endpoint printed (one list per endpoint); any failure aborts."""
    failed = getattr(results, "failed", {})
    if failed:
        raise RuntimeError(f"{len(failed)} endpoints failed, e.g. {next(iter(failed.values()))}")
    rows = [[int(word) for word in result.stdout.split()] for result in results.values()]
    if any(len(row) != fields for row in rows):
        raise RuntimeError(f"unexpected output: {rows[:3]}")
    return rows


def at_once(fleet: Any) -> dict[str, Any]:
    """Everyone runs `date +%s%N` now; spread of the printed wall-clock times."""
    sent_ns = time.time_ns()
    results = fleet.run("date +%s%N", hide=True, warn=True)
    done_ns = time.time_ns()
    printed = [row[0] for row in printed_ns(results, 1)]
    return {
        "spread_ms": round(spread_ms(printed), 3),
        "first_after_send_ms": round((min(printed) - sent_ns) / 1e6, 3),
        "last_after_send_ms": round((max(printed) - sent_ns) / 1e6, 3),
        "round_trip_s": round((done_ns - sent_ns) / 1e9, 4),
    }


# Sleep in the shell until T, then print how far ahead T was and the wall clock after waking.
# `sleep` and `date` are forks: that cost is part of what this variant measures.
_AT_T = (
    "now=$(date +%s%N); d=$(({t}-now)); "
    "if [ $d -gt 0 ]; then sleep $((d/1000000000)).$(printf %09d $((d%1000000000))); fi; "
    "echo $d $(date +%s%N)"
)


def at_instant(fleet: Any, lead_s: float) -> dict[str, Any]:
    """Everyone sleeps until a common instant T over the open sessions; lateness of the wake-ups."""
    target_ns = time.time_ns() + int(lead_s * 1e9)
    rows = printed_ns(fleet.run(_AT_T.format(t=target_ns), hide=True, warn=True), 2)
    woke = [row[1] for row in rows]
    return {
        "lead_s": round(lead_s, 3),
        "late_starters": sum(row[0] <= 0 for row in rows),
        "spread_ms": round(spread_ms(woke), 3),
        "printed_minus_T": {k: round(v, 3) for k, v in lateness_ms(woke, target_ns).items()},
    }


def ssh_round(tmp: Path, n: int, key: paramiko.PKey, authorized: str) -> dict[str, Any]:
    with ssh_endpoints(tmp, n, authorized) as ports:
        log(f"{n} dropbear endpoints up; opening {n} fabric connections")
        started = time.monotonic()
        fleet = open_group(ports, key)
        try:
            opened_s = time.monotonic() - started
            now = at_once(fleet)
            # Lead: well beyond the time it takes to reach every endpoint, so no one starts late.
            timed = at_instant(fleet, max(1.0, 3 * now["round_trip_s"]))
        finally:
            fleet.close()
    return {"n": n, "open_connections_s": round(opened_s, 2), "at_once": now, "at_T": timed}


def run_ssh(tmp: Path, sizes: list[int]) -> list[dict[str, Any]]:
    key, authorized = client_key(tmp)
    return [ssh_round(tmp, n, key, authorized) for n in sizes]


# -- report -------------------------------------------------------------------------------------
def render(report: dict[str, Any]) -> str:
    lines = [
        f"host: {report['host']['cores']} cores, Python {report['host']['python']}, "
        f"load (1 min) before/after {report['host']['loadavg_1m_before_after']}",
        "",
        f"celery barrier (real worker, threads pool; RedisBarrier poll_s={report['celery'][0]['poll_s'] if report['celery'] else '-'}):",
    ]
    lines.append(f"{'N':>5} {'to all arrived s':>17} {'tasks/s':>8} {'results s':>10} {'woke spread ms':>15} "
                 f"{'p50 ms':>8} {'p99 ms':>8} {'late learners':>14}")  # fmt: skip
    for row in report["celery"]:
        late = row["woke_minus_start_at"]
        lines.append(f"{row['n']:>5} {row['dispatch_to_all_arrived_s']:>17.3f} {row['tasks_per_s']:>8.1f} "
                     f"{row['dispatch_to_results_s']:>10.3f} {row['woke_spread_ms']:>15.3f} {late['p50_ms']:>8.3f} "
                     f"{late['p99_ms']:>8.3f} {row['late_learners']:>14}")  # fmt: skip
    lines += ["", "fabric ThreadingGroup over dropbear (connections already open):"]
    lines.append(f"{'N':>5} {'open s':>7} {'at once spread ms':>18} {'run s':>7} "
                 f"{'at T spread ms':>15} {'T p50 ms':>9} {'T p99 ms':>9} {'late':>5}")  # fmt: skip
    for row in report["ssh"]:
        now, timed = row["at_once"], row["at_T"]
        lines.append(f"{row['n']:>5} {row['open_connections_s']:>7.2f} {now['spread_ms']:>18.3f} "
                     f"{now['round_trip_s']:>7.3f} {timed['spread_ms']:>15.3f} {timed['printed_minus_T']['p50_ms']:>9.3f} "
                     f"{timed['printed_minus_T']['p99_ms']:>9.3f} {timed['late_starters']:>5}")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, nargs="+", default=[50, 200], help="group sizes (default: 50 200)")
    parser.add_argument("--ssh-n", type=int, nargs="*", help="SSH endpoint counts (default: same as --n)")
    parser.add_argument("--lead-s", type=float, default=1.0, help="barrier lead time (RedisBarrier lead_s)")
    parser.add_argument("--poll-s", type=float, default=0.01, help="barrier poll interval (RedisBarrier default 0.01)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("SWAPLAB_REDIS_URL"):
        log("SWAPLAB_REDIS_URL is ignored: the benchmark starts its own redis-server")
    host = {"cores": os.cpu_count(), "python": platform.python_version(), "loadavg_1m": os.getloadavg()[0]}
    report: dict[str, Any] = {"host": host}
    with tempfile.TemporaryDirectory(prefix="swaplab-bench-") as tmp:
        (Path(tmp) / "celery").mkdir()
        report["celery"] = run_celery(Path(tmp) / "celery", args.n, args.lead_s, args.poll_s)
        ssh_sizes = args.n if args.ssh_n is None else args.ssh_n
        report["ssh"] = run_ssh(Path(tmp), ssh_sizes) if ssh_sizes else []
    # Other work on the host skews every figure here: keep the load beside them.
    report["host"]["loadavg_1m_before_after"] = [report["host"].pop("loadavg_1m"), os.getloadavg()[0]]
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
