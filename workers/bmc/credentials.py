"""Where a BMC's user and password come from: the environment or a file only its owner reads.

The inventory names the source (``swaplab_bmc_credentials``), never the password:

- ``env``: ``SWAPLAB_BMC_USER_<NODE>`` / ``SWAPLAB_BMC_PASSWORD_<NODE>`` (the node's name in
  capitals, ``-`` as ``_``), else the lab-wide ``SWAPLAB_BMC_USER`` / ``SWAPLAB_BMC_PASSWORD``;
- ``lab``: the lab-in-a-box's own simulated BMCs, whose credentials swaplab generated when
  the lab came up (a file like the one below, in the lab's cache directory);
- an absolute path: a YAML file ``{default: {user, password}, nodes: {NODE: {user, password}}}``
  (either part optional), a regular file owned by the worker's user that no one else may
  read or write (like an SSH key), refused otherwise.

Errors name the source and the node; a password is never part of one.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from model.paths import cache_dir
from workers.bmc.base import BmcCredentials

ENV_SOURCE = "env"
LAB_SOURCE = "lab"
LAB_USER = "swaplab"
ENV_USER = "SWAPLAB_BMC_USER"
ENV_PASSWORD = "SWAPLAB_BMC_PASSWORD"


class CredentialsError(ValueError):
    """No usable credentials for a node's BMC (the message names where swaplab looked)."""


def load_credentials(
    source: str, node: str, environ: Mapping[str, str] | None = None, lab: str | None = None
) -> BmcCredentials:
    """The credentials of ``node``'s BMC from ``source`` (``env``, ``lab`` or an absolute file path)."""
    if source == ENV_SOURCE:
        return credentials_from_env(node, os.environ if environ is None else environ)
    if source == LAB_SOURCE:
        if lab is None:
            raise CredentialsError(f"BMC of {node}: the 'lab' source needs the lab's name")
        return credentials_from_file(lab_credentials_file(lab), node)
    path = Path(source)
    if not path.is_absolute():
        raise CredentialsError(f"BMC credentials source {source!r}: 'env' or an absolute file path")
    return credentials_from_file(path, node)


def env_names(node: str) -> tuple[str, str]:
    """The per-node variable names for ``node``'s BMC user and password."""
    suffix = node.upper().replace("-", "_").replace(".", "_")
    return f"{ENV_USER}_{suffix}", f"{ENV_PASSWORD}_{suffix}"


def credentials_from_env(node: str, environ: Mapping[str, str]) -> BmcCredentials:
    """The node's own variables if it has both, else the lab-wide pair."""
    for user_var, password_var in (env_names(node), (ENV_USER, ENV_PASSWORD)):
        user, password = environ.get(user_var, ""), environ.get(password_var, "")
        if user and password:
            return BmcCredentials(user, password)
        if user or password:
            missing = password_var if user else user_var
            raise CredentialsError(f"BMC of {node}: {missing} is not set (its pair is)")
    per_node = " / ".join(env_names(node))
    raise CredentialsError(f"BMC of {node}: set {per_node} or {ENV_USER} / {ENV_PASSWORD} in the worker's environment")


def credentials_from_file(path: Path, node: str) -> BmcCredentials:
    """The node's entry of a credentials file, else its ``default``."""
    _check_private(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        # The YAML error quotes the text it choked on: which may be a password.
        raise CredentialsError(f"{path}: not readable as YAML ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise CredentialsError(f"{path}: a mapping with 'default' and/or 'nodes' expected")
    nodes = doc.get("nodes") or {}
    if not isinstance(nodes, dict):
        raise CredentialsError(f"{path}: 'nodes' must map node names to {{user, password}}")
    entry, where = (nodes[node], f"nodes.{node}") if node in nodes else (doc.get("default"), "default")
    if entry is None:
        raise CredentialsError(f"{path}: no entry for {node} under 'nodes' and no 'default'")
    return _entry(path, where, entry)


def _entry(path: Path, where: str, entry: Any) -> BmcCredentials:
    if not isinstance(entry, dict) or set(entry) != {"user", "password"}:
        raise CredentialsError(f"{path}: {where} must have exactly 'user' and 'password'")
    user, password = entry["user"], entry["password"]
    if not isinstance(user, str) or not isinstance(password, str) or not user or not password:
        raise CredentialsError(f"{path}: {where}: 'user' and 'password' must be non-empty strings")
    return BmcCredentials(user, password)


def _check_private(path: Path) -> None:
    """Refuse a file another user could read or replace (its contents are secrets)."""
    try:
        info = path.lstat()
    except OSError as exc:
        raise CredentialsError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CredentialsError(f"{path}: not a regular file")
    if info.st_uid != os.geteuid():
        raise CredentialsError(f"{path}: owned by uid {info.st_uid}, not by the worker's user")
    if info.st_mode & 0o077:
        raise CredentialsError(
            f"{path}: mode {stat.S_IMODE(info.st_mode):04o}; group and others must have no access (chmod 600)"
        )


def lab_credentials_file(lab: str) -> Path:
    """Where a lab-in-a-box keeps the credentials of its simulated BMCs."""
    return cache_dir("labs", lab) / "bmc-credentials.yml"


def ensure_lab_credentials(lab: str) -> BmcCredentials:
    """The lab-in-a-box's BMC credentials, generated (random, in a 0600 file) the first time."""
    path = lab_credentials_file(lab)
    if not path.exists():
        password = secrets.token_hex(8)  # 16: longer ones ipmi_sim's users do not log in with
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump({"default": {"user": LAB_USER, "password": password}}, out)
    return credentials_from_file(path, "default")
