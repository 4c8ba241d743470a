"""The kernel build cache with a stub builder: the same inputs build once, even when asked
twice at once (a file lock on one host, the Redis lock across build workers); a failure of
the inputs is cached with its error and answered at once; one of the host is not cached.
Lineages (a build's own tree and ccache) are capped: the least recently used go first."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from model.kernel import BuildSpec, DebianSource
from model.protocol import StageFailure
from model.runspec import BuildMessage
from tests.integration.redis_server import RedisServer, redis_server_fixture  # noqa: F401  (the fixture)
from workers import tasks
from workers.kbuild import artifacts, build, lineage, sandbox
from workers.kbuild.build import BuildError, Inputs, build_kernel
from workers.kbuild.tree import SourceTree

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
DIGEST = "d" * 64
SPEC = BuildSpec(source=DebianSource(debian="linux-source-6.1"))


@pytest.fixture(autouse=True)
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SWAPLAB_CACHE", str(tmp_path / "cache"))
    inputs = Inputs(SourceTree(tmp_path, "0" * 40, "tarball:x"), [], DIGEST)
    monkeypatch.setattr(build, "_inputs", lambda _spec, _say: inputs)


class StubBuilder:
    """Builds by sleeping and leaving a fake bzImage; counts how often it really built."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.builds, self.lock = tmp, 0, threading.Lock()

    def __call__(self, spec: BuildSpec, inputs: Inputs, say: Any, jobs: int, fresh: bool) -> artifacts.Artifact:
        with self.lock:
            self.builds += 1
        time.sleep(0.5)
        image = self.tmp / f"bzImage.{threading.get_ident()}"
        image.write_bytes(b"\0" * 0x202 + b"HdrS")
        meta = {"status": "ok", "release": "6.1.0-swaplab-dddddddd", "uts_version": "#1 @1700000000", "patches": []}
        return artifacts.store(inputs.digest, {"bzImage": image}, meta)


def test_two_requests_for_one_hash_at_once_build_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stub = StubBuilder(tmp_path)
    monkeypatch.setattr(build, "_build", stub)
    found: list[str] = []
    threads = [
        threading.Thread(target=lambda: found.append(build_kernel(SPEC, lambda _t: None).hash)) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stub.builds == 1 and found == [DIGEST] * 3


def test_the_same_inputs_later_are_not_built_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stub = StubBuilder(tmp_path)
    monkeypatch.setattr(build, "_build", stub)
    first = build_kernel(SPEC, lambda _t: None)
    said: list[str] = []
    again = build_kernel(SPEC, said.append)
    assert stub.builds == 1 and again.hash == first.hash and any(line.startswith("cached") for line in said)


def test_a_compile_error_is_cached_and_answered_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def compile_error() -> None:
        raise BuildError("input", "kernel", "mm/swapfile.c:3216:9: error: expected ';' before 'pr_info'")

    inputs = build._inputs(SPEC, lambda _t: None)
    with pytest.raises(BuildError):
        build._stage(inputs, "kernel", lambda _t: None, compile_error)
    monkeypatch.setattr(build, "_build", lambda *_a: pytest.fail("a cached failure was built again"))
    with pytest.raises(BuildError, match="expected ';'") as failed:
        build_kernel(SPEC, lambda _t: None)
    assert (failed.value.cause, failed.value.stage) == ("input", "kernel")


def test_a_build_stopped_by_the_host_is_not_cached() -> None:
    def killed() -> None:
        raise BuildError("infra", "kernel", "the build was stopped by the host (exit -9)")

    inputs = build._inputs(SPEC, lambda _t: None)
    with pytest.raises(BuildError):
        build._stage(inputs, "kernel", lambda _t: None, killed)
    assert artifacts.find(DIGEST) is None


def test_two_build_workers_build_one_hash_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_server: RedisServer
) -> None:
    """The build task's Redis lock: two workers (threads here) asked for one hash at once."""
    stub = StubBuilder(tmp_path)
    monkeypatch.setattr(build, "_build", stub)
    monkeypatch.setattr(tasks, "admit_build", lambda message: message.kernel.build)
    # Each "worker" its own file lock: only the Redis lock can keep them apart.
    monkeypatch.setattr(artifacts, "building", lambda _digest: _no_lock())
    message = BuildMessage(campaign="c-20261129-120000-abcd", run_id="r001", lab="local", kernel={"build": SPEC})
    outcomes: list[StageFailure | dict[str, Any]] = []

    def worker() -> None:
        outcomes.append(tasks._build(redis_server.client(), message, lambda _t: None))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stub.builds == 1
    assert [outcome["artifact"] for outcome in outcomes if isinstance(outcome, dict)] == [DIGEST, DIGEST]


class _no_lock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


def test_lineages_beyond_the_cap_go_least_recently_used_first(monkeypatch: pytest.MonkeyPatch) -> None:
    owner = sandbox.Account(os.geteuid(), os.getegid(), switch=False)
    for age, key in enumerate(("c" * 24, "b" * 24, "a" * 24, "d" * 24)):  # c is the oldest
        with lineage.held(key, owner) as place:
            (place.path / "ccache").mkdir()
            (place.path / "ccache" / "object").write_bytes(b"\0" * 1000)
        when = time.time() - 1000 * (4 - age)
        os.utime(place.path.parent / f".{key}.lock", (when, when))
    with lineage.held("b" * 24, owner):  # in use by a build: never removed
        removed = lineage.evict(keep="d" * 24, cap=1500)
    assert removed == ["c" * 24, "a" * 24]
    assert sorted(path.name for path in (place.path.parent).iterdir() if not path.name.startswith(".")) == [
        "b" * 24,
        "d" * 24,
    ]
