"""A client process for tests/postgres/test_clients.py: commits transactions and reports each one's offsets.

Run as ``python -c "from tests.postgres.client import main; main()" URL SCHEMA CLIENT ROUNDS``. It opens
the store, prints ``ready``, waits for a line on stdin (so that every client starts at once), then
commits ``ROUNDS`` transactions: each appends to the client's own stream at an exact offset, to the
shared ``outbox`` at ``logstore.ANY``, and every third one also to the shared ``shared-<k>`` streams at
exact offsets, retried on a conflict. It prints one JSON line per commit:
``{"goffs": [start, stop], "streams": {name: [start, stop]}, "ids": [message ids in order]}``.
"""

from __future__ import annotations

import json
import random
import sys

import logstore
from logstore import ANY, Envelope, OffsetConflictError


def main() -> None:
    url, schema, client, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(client)
    with logstore.open(url, schema=schema) as store:
        print("ready", flush=True)
        sys.stdin.readline()
        own = f"client-{client}"
        for n in range(rounds):
            while True:
                tx, committer = store.begin_tx()
                plan: list[tuple[str, int | logstore.AnyOffset, int]] = [
                    (own, n and store.head(own), 1 + rng.randrange(3)),
                    ("outbox", ANY, 1),
                ]
                if n % 3 == 0:
                    for k in sorted(rng.sample(range(3), 2), reverse=bool(client % 2)):
                        plan.append((f"shared-{k}", store.head(f"shared-{k}"), 1))
                ids: list[str] = []
                for stream, offset, count in plan:
                    envs = [Envelope.new("Done", {"c": client, "n": n, "k": k}) for k in range(count)]
                    tx.append(stream, offset, envs)
                    ids.extend(e.message_id for e in envs)
                try:
                    goffs = committer.commit()
                except OffsetConflictError:
                    continue  # another client committed to a shared stream first: read the heads again
                break
            spans = {name: [r.start, r.stop] for name, r in (tx.stream_offsets or {}).items()}
            print(json.dumps({"goffs": [goffs.start, goffs.stop], "streams": spans, "ids": ids}), flush=True)


if __name__ == "__main__":
    main()
