"""Fixtures integration modules share: a lab network with three guests' taps open."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.lab_frames import Guest, lab_up, opened_guests
from workers.lab.network import LabNetwork


@pytest.fixture
def net() -> Iterator[LabNetwork]:
    """A fresh lab network (namespace, bridge, taps, rules), down after the test."""
    yield from lab_up()


@pytest.fixture
def guests(net: LabNetwork) -> Iterator[tuple[Guest, Guest, Guest]]:
    """(server, node a, node b) of ``net``, each known to the bridge."""
    yield from opened_guests(net)
