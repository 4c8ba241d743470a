"""Following a campaign live from its Redis event stream (``watch``, ``run``, ``submit --wait``)."""

from __future__ import annotations

import time
from typing import Any, TextIO

import redis

from orchestrator.store import TERMINAL, CampaignStore


def format_event(event: dict[str, Any]) -> str | None:
    """One human line for an event, or None for events not worth a line."""
    stamp = time.strftime("%H:%M:%S", time.localtime(float(event.get("at", 0) or 0)))
    kind = event.get("kind")
    where = " ".join(part for part in (event.get("run", ""), event.get("node", "")) if part)
    if kind == "phase":
        return f"[{stamp}] {where:<12} {event.get('phase', ''):<9} {event.get('detail', '')}".rstrip()
    if kind == "swap":
        return f"[{stamp}] {where:<12} {'workload':<9} swapped out {float(event['out_mib']):7.1f} MiB, in {float(event['in_mib']):7.1f} MiB {event.get('detail', '')}".rstrip()
    if kind in ("run", "campaign"):
        detail = f": {event['detail']}" if event.get("detail") else ""
        return f"[{stamp}] {where or kind:<12} {event.get('status', '')}{detail}"
    if kind == "note":
        return f"[{stamp}] {where:<12} {event.get('detail', '')}"
    return None


REDIS_OUTAGE_S = 120.0


def follow(store: CampaignStore, cid: str, stream: TextIO, poll_ms: int = 1000) -> dict[str, Any]:
    """Print events until the campaign is done or cancelled; return its final state.

    A Redis restart (AOF keeps the state) is waited out for up to REDIS_OUTAGE_S.
    """
    last = "0-0"
    down_since: float | None = None
    while True:
        try:
            last, info = _follow_step(store, cid, stream, last, poll_ms)
            down_since = None
        except redis.ConnectionError as err:
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > REDIS_OUTAGE_S:
                raise
            print(f"[{time.strftime('%H:%M:%S')}] redis unreachable ({err}); retrying", file=stream, flush=True)
            time.sleep(1.0)
            continue
        if info is not None:
            return info


def _follow_step(
    store: CampaignStore, cid: str, stream: TextIO, last: str, poll_ms: int
) -> tuple[str, dict[str, Any] | None]:
    """Print new events; return the last event id, and the campaign once it has ended."""
    last = _print_events(store, cid, stream, last, poll_ms)
    info = store.campaign(cid)
    if info.get("status") not in TERMINAL:
        return last, None
    return _print_events(store, cid, stream, last, 1), info


def _print_events(store: CampaignStore, cid: str, stream: TextIO, last: str, block_ms: int) -> str:
    for event_id, event in store.read_events(cid, after=last, block_ms=block_ms):
        last = event_id
        line = format_event(event)
        if line:
            print(line, file=stream, flush=True)
    return last
