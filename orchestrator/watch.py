"""Following a campaign live from its Redis event stream (``watch``, ``run``, ``submit --wait``)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any, Protocol, TextIO

import redis

from model.display import printable
from model.hashes import CampaignHash, CorruptHash
from model.state import campaign_key
from orchestrator.store import TERMINAL, CampaignStore


def format_event(event: dict[str, Any]) -> str | None:
    """One human line for an event, or None for events not worth a line.

    Every field was written by a worker and may quote a guest: it is shown through
    ``model.display.printable``, so the line cannot drive the terminal it is printed on.
    """
    stamp = time.strftime("%H:%M:%S", time.localtime(float(event.get("at", 0) or 0)))
    kind = event.get("kind")
    text = {name: printable(event.get(name, "")) for name in ("run", "node", "phase", "status", "detail")}
    where = " ".join(part for part in (text["run"], text["node"]) if part)
    if kind == "phase":
        return f"[{stamp}] {where:<12} {text['phase']:<9} {text['detail']}".rstrip()
    if kind == "swap":
        return f"[{stamp}] {where:<12} {'workload':<9} swapped out {float(event['out_mib']):7.1f} MiB, in {float(event['in_mib']):7.1f} MiB {text['detail']}".rstrip()
    if kind in ("run", "campaign"):
        detail = f": {text['detail']}" if text["detail"] else ""
        return f"[{stamp}] {where or kind:<12} {text['status']}{detail}"
    if kind == "note":
        return f"[{stamp}] {where:<12} {text['detail']}"
    return None


REDIS_OUTAGE_S = 120.0


class EventSink(Protocol):
    """Where ``follow`` puts what it reads: log lines, or the live terminal view."""

    def event(self, event: Mapping[str, Any]) -> None:
        """Show one event of the campaign's stream."""

    def message(self, text: str) -> None:
        """Show a line of the follow loop's own (Redis unreachable)."""


class LogLines:
    """The log-style output, one line per event: for CI, files and pipes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def event(self, event: Mapping[str, Any]) -> None:
        """Print the event's line, if it has one; an event of a broken shape is skipped."""
        try:
            line = format_event(dict(event))
        except (KeyError, TypeError, ValueError):
            return  # a worker's malformed event must not end the follow loop
        if line:
            print(line, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """Print a line of the follow loop's own (it may quote an error's text)."""
        print(printable(text), file=self.stream, flush=True)


def wants_live_view(stream: TextIO) -> bool:
    """Draw the live view: ``stream`` is a terminal that can take it and no one asked for plain lines."""
    if os.environ.get("SWAPLAB_PLAIN") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # a closed or file-less stream
        return False


def follow(store: CampaignStore, cid: str, stream: TextIO, poll_ms: int = 1000) -> CampaignHash:
    """Show events until the campaign is done or cancelled; return its final state.

    On a terminal the live view (orchestrator.live), else log lines (see wants_live_view).
    A Redis restart (AOF keeps the state) is waited out for up to REDIS_OUTAGE_S.
    """
    if not wants_live_view(stream):
        return _follow(store, cid, LogLines(stream), poll_ms)
    # Imported here: rich stays out of the commands that never draw (validate, status).
    from orchestrator.live import LiveView

    with LiveView(stream, lookup=lambda rid: store.run(cid, rid).model_dump(mode="json")) as view:
        return _follow(store, cid, view, poll_ms)


def _follow(store: CampaignStore, cid: str, sink: EventSink, poll_ms: int) -> CampaignHash:
    last = "0-0"
    down_since: float | None = None
    while True:
        try:
            last, info = _follow_step(store, cid, sink, last, poll_ms)
            down_since = None
        except redis.ConnectionError as err:
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > REDIS_OUTAGE_S:
                raise
            sink.message(f"[{time.strftime('%H:%M:%S')}] redis unreachable ({err}); retrying")
            time.sleep(1.0)
            continue
        if info is not None:
            return info


def _follow_step(
    store: CampaignStore, cid: str, sink: EventSink, last: str, poll_ms: int
) -> tuple[str, CampaignHash | None]:
    """Show new events; return the last event id, and the campaign once it has ended."""
    last = _show_events(store, cid, sink, last, poll_ms)
    if store.status(cid) not in TERMINAL:  # the status alone: readable whatever else is wrong
        return last, None
    last = _show_events(store, cid, sink, last, 1)
    info = store.campaign(cid)
    if info is None:
        raise CorruptHash(campaign_key(cid), "the campaign vanished")
    return last, info


def _show_events(store: CampaignStore, cid: str, sink: EventSink, last: str, block_ms: int) -> str:
    for event_id, event in store.read_events(cid, after=last, block_ms=block_ms):
        last = event_id
        sink.event(event)
    return last
