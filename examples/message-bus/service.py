"""A service that asks Sluice for scoring runs over NATS, both ways, and follows their outcomes.

1. It publishes a request on the `scoring-requests` trigger's subject (fire and forget: the trigger
   turns the message into a run of score-customer).
2. It submits a run itself by request/reply on ``sluice.submit.score-customer`` and gets its run id
   back (or an error), with an idempotency key that makes a retried request safe.
3. It follows ``sluice.runs.score-customer.*`` until both runs have ended and prints each outcome.

Exit status 0 when both runs succeeded, 1 otherwise (a refused submission, a failed run, a timeout).

    python3 examples/message-bus/service.py --nats-url nats://127.0.0.1:41237 \
        --creds ~/.local/share/sluice/credentials/service.creds --customer c-042

Sluice's NATS admits no client without credentials: `sluice up` writes the file above for services
on its machine; `sluice credentials service NAME --submit score-customer --follow score-customer
--publish 'scoring.requests.>' -o FILE` makes one that may do exactly what this service does.

Needs nats-py (`pip install nats-py`; Sluice's own environment has it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid

import nats

PIPELINE = "score-customer"
TRIGGER = "scoring-requests"
FINAL = ("succeeded", "failed", "cancelled")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("SLUICE_NATS_URL", "nats://127.0.0.1:4222"),
        help="the NATS URL that `sluice up` prints (default: $SLUICE_NATS_URL or nats://127.0.0.1:4222)",
    )
    parser.add_argument(
        "--creds",
        default=os.environ.get("SLUICE_NATS_CREDS"),
        help="the service's NATS credentials file (default: $SLUICE_NATS_CREDS)",
    )
    parser.add_argument("--customer", default="c-042", help="the customer to score (default: c-042)")
    parser.add_argument("--team", default="team-a", help="the last token of scoring.requests.<team>")
    parser.add_argument("--priority", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for both outcomes")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> int:
    nc = await nats.connect(
        args.nats_url, user_credentials=args.creds, connect_timeout=5, max_reconnect_attempts=3
    )
    ended: dict[str, dict] = {}  # run id → its final announcement
    trigger_run: list[str] = []  # the run the trigger made of our message, once seen
    changed = asyncio.Event()

    async def follow(msg) -> None:
        run = json.loads(msg.data)
        customer = (run.get("params") or {}).get("customer")
        if run.get("trigger") == TRIGGER and customer == args.customer and not trigger_run:
            trigger_run.append(run["id"])
        if run["status"] in FINAL:
            ended[run["id"]] = run
        changed.set()

    try:
        # Subscribe first: a run may end before the submit reply arrives.
        await nc.subscribe(f"sluice.runs.{PIPELINE}.*", cb=follow)
        await nc.flush()

        request = {"customer": args.customer, "kind": "full", "priority": args.priority}
        await nc.publish(f"scoring.requests.{args.team}", json.dumps(request).encode())
        print(f"published {json.dumps(request)} on scoring.requests.{args.team}")

        submit = {"params": {"customer": args.customer}, "idempotency_key": f"service-{uuid.uuid4()}"}
        reply = json.loads(
            (await nc.request(f"sluice.submit.{PIPELINE}", json.dumps(submit).encode(), 10)).data
        )
        if "error" in reply:
            print(f"submission refused: {reply['error']}", file=sys.stderr)
            return 1
        submitted = reply["run_id"]
        print(f"submitted run {submitted} on sluice.submit.{PIPELINE}")

        async def both_ended() -> None:
            while not (submitted in ended and trigger_run and trigger_run[0] in ended):
                changed.clear()
                await changed.wait()

        try:
            await asyncio.wait_for(both_ended(), args.timeout)
        except TimeoutError:
            print(f"not both runs ended within {args.timeout:g} s", file=sys.stderr)
            return 1
        outcomes = {"trigger": ended[trigger_run[0]], "submit": ended[submitted]}
        for how, run in outcomes.items():
            print(f"{how} run {run['id']}: {run['status']} (customer {run['params']['customer']})")
        return 0 if all(run["status"] == "succeeded" for run in outcomes.values()) else 1
    finally:
        await nc.drain()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
