"""Kernel sources are validated strictly, and modprobe's dependency output parses right."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from model.kernel import KernelSource
from workers.kernel import (
    parse_apt_show,
    parse_deb822_mirror,
    parse_one_line_mirror,
    parse_show_depends,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "modprobe"


def _names(paths: list[str]) -> list[str]:
    return [Path(p).name for p in paths]


def test_show_depends_lists_dependencies_first_for_nfsv4_on_6_1() -> None:
    text = (FIXTURES / "6.1.0-56-amd64-nfsv4.txt").read_text()
    assert _names(parse_show_depends(text)) == [
        "netfs.ko", "fscache.ko", "sunrpc.ko", "grace.ko", "lockd.ko", "nfs.ko",
        "dns_resolver.ko", "nfsv4.ko",
    ]  # fmt: skip


def test_show_depends_keeps_absolute_module_paths() -> None:
    text = (FIXTURES / "6.1.0-56-amd64-virtio_net.txt").read_text()
    paths = parse_show_depends(text)
    assert all(p.startswith("/") and p.endswith(".ko") for p in paths)
    assert _names(paths)[-1] == "virtio_net.ko"
    assert len(paths) == 5


@pytest.mark.parametrize("fixture", ["6.1.0-56-amd64-af_packet.txt", "6.12.117+deb13-amd64-virtio_pci.txt"])
def test_builtin_drivers_need_no_insmod(fixture: str) -> None:
    assert parse_show_depends((FIXTURES / fixture).read_text()) == []


def test_show_depends_drops_repeats_and_module_options() -> None:
    text = "insmod /m/a.ko \ninsmod /m/b.ko debug=1\ninsmod /m/a.ko \nbuiltin c\n"
    assert parse_show_depends(text) == ["/m/a.ko", "/m/b.ko"]


def test_trixie_nfsv4_order_has_no_fscache_module() -> None:
    text = (FIXTURES / "6.12.117+deb13-amd64-nfsv4.txt").read_text()
    names = _names(parse_show_depends(text))
    assert names[0] == "netfs.ko" and names[-1] == "nfsv4.ko"
    assert "fscache.ko" not in names


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "give exactly one of package, deb, vmlinuz"),
        (
            {"package": "linux-image-amd64", "deb": "/x.deb"},
            "give exactly one of package, deb, vmlinuz",
        ),
        ({"deb": "/x.deb", "suite": "trixie"}, "suite only applies to package"),
        ({"vmlinuz": "/boot/vmlinuz"}, "vmlinuz and modules go together"),
        ({"package": "linux-image-amd64; rm -rf /"}, "not a Debian kernel image package"),
        ({"package": "-olinux-image-amd64"}, "not a Debian kernel image package"),
        ({"package": "bash"}, "not a Debian kernel image package"),
        ({"package": "linux-image-amd64", "suite": "trixie main"}, "not a Debian suite"),
        ({"package": "linux-image-amd64", "flavour": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_kernel_source_rejects_bad_input(fields: dict[str, str], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        KernelSource.model_validate(fields)


def test_kernel_source_labels() -> None:
    assert KernelSource(package="linux-image-amd64").label() == "linux-image-amd64"
    trixie = KernelSource(package="linux-image-cloud-amd64", suite="trixie")
    assert trixie.label() == "linux-image-cloud-amd64@trixie"
    assert KernelSource(deb=Path("/d/k.deb")).label() == "deb:k.deb"
    local = KernelSource(vmlinuz=Path("/b/bzImage"), modules=Path("/b/mods"))
    assert local.label() == "local:bzImage"


def test_kernel_source_accepts_exact_abi_package() -> None:
    source = KernelSource(package="linux-image-6.12.117+deb13-amd64", suite="trixie")
    assert source.package == "linux-image-6.12.117+deb13-amd64"


def test_apt_show_first_stanza_with_continuations() -> None:
    text = (
        "Package: linux-image-amd64\nVersion: 6.1.192-2\n"
        "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\nDescription: x\n more\n\n"
        "Package: linux-image-amd64\nVersion: 6.1.176-1\n"
    )
    fields = parse_apt_show(text)
    assert fields["Version"] == "6.1.192-2"
    assert fields["Description"] == "x more"


def test_mirror_comes_from_the_non_security_stanza() -> None:
    deb822 = (
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
    )
    assert parse_deb822_mirror(deb822) == "http://mirror.example/debian"
    one_line = (
        "deb http://security.example/ bookworm-security main\n"
        "deb [signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
    )
    assert parse_one_line_mirror(one_line) == "http://mirror.example/debian"
