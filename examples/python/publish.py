#!/usr/bin/env python3
"""Publish one wxdispatch job from Python (pika) and wait for its outcome event.

    pip install pika            # or: apt-get install python3-pika
    python3 publish.py --url amqp://guest:guest@127.0.0.1:5672/%2F --account kf-main --to wmUser

Steps: bind an exclusive, auto-delete queue to the outcome exchange with "<account>.*"
(before publishing, so the event cannot be missed); publish the job to exchange "wxdispatch"
with routing key = the account, persistent, message_id = job id, a fresh correlation_id,
publisher confirms and mandatory (an unroutable job is an error, not silence); wait for the
event carrying that correlation_id and print it as one JSON line on stdout.

Exit codes: 0 the job was sent; 1 the job ended otherwise (dead, suppressed, expired,
cancelled, failed: the event says why); 2 the broker refused or returned the job, or no event
came within --timeout seconds.
"""

import argparse
import json
import os
import sys
import time
import uuid

import pika
from pika.exceptions import ChannelClosedByBroker, NackError, UnroutableError

# The worker's exchanges: jobs in, outcome events out (topic, routing key "<account>.<status>").
JOBS_EXCHANGE = "wxdispatch"
OUTCOMES_EXCHANGE = "wxdispatch.outcomes"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("WXDISPATCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
                   help="broker URL with the vhost (env WXDISPATCH_AMQP_URL)")
    p.add_argument("--account", default=os.environ.get("WXDISPATCH_ACCOUNT"), help="account name (env WXDISPATCH_ACCOUNT)")
    p.add_argument("--to", default=os.environ.get("WXDISPATCH_TO"), help="openid or external_userid (env WXDISPATCH_TO)")
    p.add_argument("--text", default="Hello from Python", help="the text message")
    p.add_argument("--open-kfid", default=None, help="WeCom: the open_kfid (needed when the account has several)")
    p.add_argument("--job-id", default=None, help="job id (default: py-<random>)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the outcome event")
    args = p.parse_args()
    if not args.account or not args.to:
        p.error("--account and --to are required (or WXDISPATCH_ACCOUNT and WXDISPATCH_TO)")

    job_id = args.job_id or "py-" + uuid.uuid4().hex[:24]
    correlation_id = str(uuid.uuid4())
    job = {"job_id": job_id, "to": args.to, "message": {"text": args.text}}
    if args.open_kfid:
        job["open_kfid"] = args.open_kfid

    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    try:
        ch.exchange_declare(OUTCOMES_EXCHANGE, passive=True)
    except ChannelClosedByBroker:
        # Not there yet (no worker has started on this vhost): declare it as the worker does,
        # so that the binding never races the worker. The failed check closed the channel.
        ch = conn.channel()
        ch.exchange_declare(OUTCOMES_EXCHANGE, exchange_type="topic", durable=True)
    ch.confirm_delivery()
    queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
    ch.queue_bind(queue, OUTCOMES_EXCHANGE, routing_key=args.account + ".*")

    try:
        ch.basic_publish(
            JOBS_EXCHANGE,
            args.account,
            json.dumps(job).encode(),
            pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,
                message_id=job_id,
                correlation_id=correlation_id,
            ),
            mandatory=True,
        )
    except UnroutableError:
        print(f"job {job_id}: returned unroutable (is {args.account!r} an account of the worker?)", file=sys.stderr)
        return 2
    except NackError:
        print(f"job {job_id}: the broker nacked it", file=sys.stderr)
        return 2
    print(f"job {job_id} published (correlation_id {correlation_id}); waiting for its outcome", file=sys.stderr)

    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            conn.process_data_events(time_limit=0.2)
            continue
        if props.correlation_id != correlation_id:
            continue  # another publisher's job on the same account
        try:
            event = json.loads(body)
        except ValueError:
            print(f"job {job_id}: the outcome event is not JSON: {body[:200]!r}", file=sys.stderr)
            return 2
        print(json.dumps(event, ensure_ascii=False), flush=True)
        conn.close()
        return 0 if event.get("status") == "sent" else 1
    print(f"job {job_id}: no outcome event within {args.timeout:g} s", file=sys.stderr)
    conn.close()
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # the broker unreachable or closing the channel: exit 2, one line
        print(f"error: {e!r}", file=sys.stderr)
        sys.exit(2)
