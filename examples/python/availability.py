#!/usr/bin/env python3
"""Read a SKU's availability for a channel from Tally's KV bucket, then watch an event subject.

    pip install nats-py
    python3 examples/python/availability.py --env prod --channel web --sku SKU-1 --event low_stock

Prints one JSON line per thing it reads: {"availability": {...}} from the KV bucket, {"watching": subject}
once it listens, then {"event": {...}, "subject": ..., "msgId": ...} per event (at most --max-events,
until --seconds pass). Schemas of both payloads: schemas/nats/availability.json and
schemas/nats/event.<type>.json. See docs/integrators.md.
"""

import argparse
import asyncio
import json
import os
import re
import sys

import nats
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError

PLAIN = re.compile(r"[A-Za-z0-9_-]")


def encode_token(value: str) -> str:
    """A name as one subject token / KV key part: [A-Za-z0-9_-] kept, every other byte as =XX (UTF-8, upper-case hex)."""
    if value == "":
        return "="
    return "".join(ch if PLAIN.fullmatch(ch) else "".join(f"={b:02X}" for b in ch.encode("utf-8")) for ch in value)


def quantity(value) -> int:
    """A quantity is a JSON integer, or a decimal string beyond 2^53 - 1: both read exactly as an int."""
    return int(value)


async def read_availability(js, env: str, channel: str, sku: str):
    kv = await js.key_value(f"tally_{env}_availability")
    try:
        entry = await kv.get(f"{encode_token(channel)}.{encode_token(sku)}")
    except KeyNotFoundError:
        return None
    value = json.loads(entry.value)
    # A reader keeps the newest: a value whose seq/version is older than one it has is dropped.
    for field in ("available", "onHand", "reserved"):
        value[field] = quantity(value[field])
    return {**value, "revision": entry.revision}


async def watch_events(js, env: str, event: str, max_events: int, seconds: float) -> int:
    subject = f"tally.{env}.events.{encode_token(event)}"
    # An ordered push consumer from now on: no state on the server, redelivered in order after a reconnect.
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
    print(json.dumps({"watching": subject}), flush=True)
    seen = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while seen < max_events and loop.time() < deadline:
        try:
            msg = await sub.next_msg(timeout=max(0.1, min(1.0, deadline - loop.time())))
        except nats.errors.TimeoutError:
            continue
        # Nats-Msg-Id is unique per publication: a consumer that must act once keeps the ids it has handled.
        msg_id = msg.headers.get("Nats-Msg-Id") if msg.headers else None
        print(json.dumps({"event": json.loads(msg.data), "subject": msg.subject, "msgId": msg_id}), flush=True)
        seen += 1
    await sub.unsubscribe()
    return seen


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("TALLY_NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument("--env", default=os.environ.get("TALLY_ENV", "dev"))
    p.add_argument("--channel", required=True)
    p.add_argument("--sku", required=True)
    p.add_argument("--event", default="low_stock", help="an event type: low_stock, out_of_stock, hold_refused, command_rejected, alert…")
    p.add_argument("--max-events", type=int, default=1)
    p.add_argument("--seconds", type=float, default=30.0)
    args = p.parse_args()

    nc = await nats.connect(args.url)
    try:
        js = nc.jetstream()
        availability = await read_availability(js, args.env, args.channel, args.sku)
        print(json.dumps({"availability": availability}), flush=True)
        if args.max_events > 0:
            await watch_events(js, args.env, args.event, args.max_events, args.seconds)
    finally:
        await nc.close()
    return 0 if availability is not None else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
