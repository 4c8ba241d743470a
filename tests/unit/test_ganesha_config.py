"""Pure parts of the ganesha backend: config text (one export per node, each open to its
node's address alone), swap file names, filesystem verdict, what nodes are told."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from model.lab import NfsRoute
from workers.lab.nfs import make_nfs_server
from workers.lab.nfs.base import NfsExport, NfsServerError
from workers.lab.nfs.ganesha import (
    DEFAULT_PORT,
    GaneshaServer,
    filesystem_problem,
    render_config,
    validate_swap_name,
)


def _route(node: str, export_id: int, client: str, relayed: bool = True, port: int = 12049) -> NfsRoute:
    return NfsRoute(node, export_id, "10.0.2.100", 2049 if relayed else port, client, "127.0.0.1", port, relayed)


ROUTES = (_route("node1", 1, "127.0.0.2"), _route("node2", 2, "127.0.0.3"))


def _config(
    port: int = 12049, bind: str = "127.0.0.1", routes: tuple[NfsRoute, ...] = ROUTES, grace: bool = False
) -> str:
    return render_config(
        port=port,
        bind=bind,
        export_dir=Path("/srv/swaplab/export"),
        pseudo="/export",
        recovery_root=Path("/srv/swaplab/ganesha/recovery"),
        routes=routes,
        grace=grace,
    )


def _export_blocks(text: str) -> list[str]:
    return ["EXPORT {" + block for block in text.split("\nEXPORT {")[1:]]


def test_config_binds_loopback_on_its_own_port() -> None:
    text = _config(port=12345)
    assert "Bind_addr = 127.0.0.1;" in text
    assert "NFS_Port = 12345;" in text
    assert "0.0.0.0" not in text
    assert "2049;" not in text.replace("12345", "")


def test_config_is_nfsv4_only_without_side_protocols() -> None:
    text = _config()
    assert text.count("Protocols = 4;") == 1 + 2 * len(ROUTES)  # core, and each export and its client
    for off in ("Enable_NLM = false;", "Enable_RQUOTA = false;", "Enable_UDP = false;"):
        assert off in text
    assert "Graceless = true;" in text
    assert "Lease_Lifetime = 30;" in text
    assert "RecoveryBackend = fs;" in text
    assert 'RecoveryRoot = "/srv/swaplab/ganesha/recovery";' in text


def test_the_start_after_a_restart_fault_has_a_grace_period_within_the_lease() -> None:
    text = _config(grace=True)
    assert "Graceless = false;" in text and "Graceless = true;" not in text
    assert "Grace_Period = 30;" in text and "Lease_Lifetime = 30;" in text
    assert 'RecoveryRoot = "/srv/swaplab/ganesha/recovery";' in text  # where the clients to reclaim are
    assert text.count("{") == text.count("}")


def test_config_has_one_export_per_node_open_to_its_address_alone() -> None:
    text = _config()
    assert text.count("{") == text.count("}")
    expected = [("node1", 1, "127.0.0.2"), ("node2", 2, "127.0.0.3")]
    for block, (node, export_id, client) in zip(_export_blocks(text), expected, strict=True):
        assert f"Export_Id = {export_id};" in block
        assert f'Path = "/srv/swaplab/export/{node}";' in block
        assert f'Pseudo = "/export/{node}";' in block
        assert "Squash = No_Root_Squash;" in block and "Name = VFS;" in block
        # Nobody by default; read-write for the node's client address only.
        export_level, client_block = block.split("CLIENT {")
        assert "Access_Type = None;" in export_level and "RW" not in export_level
        assert f"Clients = {client};" in client_block and "Access_Type = RW;" in client_block
        # Only root on the host binds a port below 1024: the relay QEMU runs, no local user.
        assert "PrivilegedPort = true;" in client_block


def test_a_direct_node_is_admitted_from_its_own_address_without_the_port_rule() -> None:
    [block] = _export_blocks(_config(routes=(_route("ssh1", 1, "192.0.2.7", relayed=False),)))
    assert "Clients = 192.0.2.7;" in block
    assert "PrivilegedPort" not in block


def test_a_lab_without_nodes_exports_nothing() -> None:
    assert "EXPORT" not in _config(routes=())


@pytest.mark.parametrize("name", ["swap.node1", "swap-n_2", "a", "run42.node-3.swap"])
def test_valid_swap_names(name: str) -> None:
    validate_swap_name(name)


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "/abs", ".hidden", "..", "sp ace", "x\n", "a" * 129, "é"])
def test_invalid_swap_names_are_refused(name: str) -> None:
    with pytest.raises(NfsServerError, match="invalid swap file name"):
        validate_swap_name(name)


@pytest.mark.parametrize("f_type", [0xEF53, 0x58465342, 0x9123683E])
def test_filesystems_with_file_handles_are_accepted(f_type: int) -> None:
    assert filesystem_problem(Path("/x"), f_type) is None


@pytest.mark.parametrize(("f_type", "fs"), [(0x01021994, "tmpfs"), (0x794C7630, "overlayfs"), (0x858458F6, "ramfs")])
def test_filesystems_without_file_handles_are_refused(f_type: int, fs: str) -> None:
    problem = filesystem_problem(Path("/run/exp"), f_type)
    assert problem is not None
    assert "/run/exp" in problem and fs in problem


def test_unknown_filesystem_is_refused_with_its_magic() -> None:
    problem = filesystem_problem(Path("/x"), 0x12345678)
    assert problem is not None and "0x12345678" in problem


def test_settings_defaults_and_export(tmp_path: Path) -> None:
    routes = {"node1": ROUTES[0]}
    server = make_nfs_server(
        "ganesha", "lab1", {"export_dir": tmp_path / "e", "state_dir": tmp_path / "s", "routes": routes}
    )
    assert isinstance(server, GaneshaServer)
    assert server.port == DEFAULT_PORT == 12049
    assert server.bind == "127.0.0.1"
    assert server.export() == NfsExport(server="10.0.2.100", port=12049, path="/export")
    assert server.node_export("node1") == NfsExport(server="10.0.2.100", port=2049, path="/export/node1")
    assert server.swap_file_path("node1", "swap.n1") == tmp_path / "e" / "node1" / "swap.n1"
    with pytest.raises(NfsServerError, match="node 'node9' has no export"):
        server.node_export("node9")


def test_the_data_path_names_every_hop(tmp_path: Path) -> None:
    routes = {"node1": ROUTES[1], "ssh1": _route("ssh1", 3, "192.0.2.7", relayed=False)}
    server = GaneshaServer("lab1", {"export_dir": str(tmp_path), "state_dir": str(tmp_path), "routes": routes})
    assert server.data_path("node1") == (
        "user-mode net, restrict=on, guestfwd 10.0.2.100:2049 -> relay from 127.0.0.3 -> nfs-ganesha 127.0.0.1:12049"
    )
    assert server.data_path("ssh1") == "direct, 10.0.2.100:12049 from 192.0.2.7 -> nfs-ganesha 127.0.0.1:12049"


@pytest.mark.parametrize("bad", ['/srv/"x', "/srv/x;y", "/srv/a\nb", "/srv/{x}"])
def test_directories_the_config_cannot_quote_are_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(NfsServerError, match="cannot quote"):
        GaneshaServer("lab1", {"export_dir": bad, "state_dir": str(tmp_path)})


def test_default_dirs_live_in_the_lab_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWAPLAB_CACHE", str(tmp_path))
    server = GaneshaServer("lab1", {"port": 13049, "guest_address": "192.0.2.1"})
    assert server.export_dir == tmp_path / "labs" / "lab1" / "export"
    assert server.state_dir == tmp_path / "labs" / "lab1" / "ganesha"
    assert server.export() == NfsExport(server="192.0.2.1", port=13049, path="/export")
    assert server.routes == {}  # no inventory, no node: nothing is exported


def test_wildcard_bind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NfsServerError, match=r"0\.0\.0\.0"):
        GaneshaServer("lab1", {"bind": "0.0.0.0", "state_dir": tmp_path, "export_dir": tmp_path})


def test_a_pid_file_still_being_written_is_not_a_dead_daemon(tmp_path: Path) -> None:
    # ganesha creates its pid file before writing the pid: reading "empty" as "died" made
    # about one start in ten kill a healthy daemon.
    server = GaneshaServer("lab", {"state_dir": str(tmp_path), "export_dir": str(tmp_path / "export")})
    assert not server._started_and_died()  # no pid file yet
    server.pid_path.write_text("")
    assert not server._started_and_died()
    server.pid_path.write_text(f"{os.getpid()}\n")
    assert not server._started_and_died()
    dead = subprocess.Popen(["true"])
    dead.wait()
    server.pid_path.write_text(f"{dead.pid}\n")
    assert server._started_and_died()
