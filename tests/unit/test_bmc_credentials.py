"""Where a BMC's credentials come from, and that no error ever quotes a password."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workers.bmc.base import BmcCredentials
from workers.bmc.credentials import CredentialsError, credentials_from_env, env_names, load_credentials

SECRET = "hunter2-not-in-messages"


def test_a_nodes_own_variables_come_before_the_lab_wide_pair() -> None:
    env = {
        "SWAPLAB_BMC_USER": "lab",
        "SWAPLAB_BMC_PASSWORD": "lab-pw",
        "SWAPLAB_BMC_USER_RACK1_N2": "own",
        "SWAPLAB_BMC_PASSWORD_RACK1_N2": SECRET,
    }
    assert env_names("rack1-n2") == ("SWAPLAB_BMC_USER_RACK1_N2", "SWAPLAB_BMC_PASSWORD_RACK1_N2")
    assert credentials_from_env("rack1-n2", env) == BmcCredentials("own", SECRET)
    assert credentials_from_env("node9", env) == BmcCredentials("lab", "lab-pw")


def test_half_a_pair_is_an_error_naming_the_missing_variable() -> None:
    with pytest.raises(CredentialsError, match="SWAPLAB_BMC_PASSWORD_NODE1 is not set"):
        credentials_from_env("node1", {"SWAPLAB_BMC_USER_NODE1": "u", "SWAPLAB_BMC_PASSWORD": SECRET})


def test_no_credentials_says_where_to_put_them() -> None:
    with pytest.raises(
        CredentialsError, match="SWAPLAB_BMC_USER_NODE1 / SWAPLAB_BMC_PASSWORD_NODE1 or SWAPLAB_BMC_USER"
    ):
        load_credentials("env", "node1", environ={})


def test_the_password_never_shows_in_a_repr() -> None:
    assert SECRET not in repr(BmcCredentials("u", SECRET))


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_a_file_gives_the_nodes_entry_else_its_default(tmp_path: Path) -> None:
    path = private_file(
        tmp_path / "bmc.yml",
        f"default: {{user: admin, password: {SECRET}}}\nnodes:\n  node2: {{user: n2, password: other}}\n",
    )
    assert load_credentials(str(path), "node2") == BmcCredentials("n2", "other")
    assert load_credentials(str(path), "node1") == BmcCredentials("admin", SECRET)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = private_file(tmp_path / "bmc.yml", f"default: {{user: a, password: {SECRET}}}\n", mode)
    with pytest.raises(CredentialsError, match="chmod 600"):
        load_credentials(str(path), "node1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodes: {node2: {user: a, password: b}}\n", "no entry for node1"),
        ("default: {user: a}\n", "exactly 'user' and 'password'"),
        ("default: {user: a, password: ''}\n", "non-empty strings"),
        ("- a list\n", "a mapping"),
        (f"default: {{user: a, password: {SECRET}\n", "not readable as YAML"),
    ],
)
def test_a_bad_file_is_a_clear_error_without_its_secrets(tmp_path: Path, text: str, message: str) -> None:
    path = private_file(tmp_path / "bmc.yml", text)
    with pytest.raises(CredentialsError, match=message) as caught:
        load_credentials(str(path), "node1")
    assert SECRET not in str(caught.value)


def test_a_relative_path_or_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="absolute"):
        load_credentials("bmc.yml", "node1")
    with pytest.raises(CredentialsError, match="No such file"):
        load_credentials(str(tmp_path / "absent.yml"), "node1")
