#!/usr/bin/env python3
"""A UDP relay that delays every datagram, and can lose chosen ones: it gives a client an
Internet-like round-trip time where the kernel has no netem (tests/admission.rs), and loses
the first datagrams of a given size in one direction (tests/setup_loss.rs: a setup message
lost). Run it inside a network namespace of the test's own; it only sends to --server and back
to the clients that wrote to it.

  relay.py --listen IP:PORT --server IP:PORT [--delay-ms D] [--drop up|down:LEN[:COUNT[:SKIP]]]...

--drop lets the first SKIP (default 0) datagrams of exactly LEN bytes of UDP payload going up
(client to server) or down pass, then loses the next COUNT (default 1), and prints
"dropped DIR LEN" for each.

Each datagram a client sends to --listen goes to --server D ms later, from an upstream socket
of that client's own (one per client address, so the server sees one peer per client); each
datagram the server sends back on it goes to the client D ms later. Prints "relaying" once
bound, and a summary line ("relayed up=N down=N clients=N") when it gets SIGTERM.

Python standard library only.
"""

import argparse
import heapq
import itertools
import selectors
import signal
import socket
import sys
import time


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def drop_spec(text):
    parts = text.split(":")
    if len(parts) not in (2, 3, 4) or parts[0] not in ("up", "down"):
        raise argparse.ArgumentTypeError(f"--drop {text}: want up|down:LEN[:COUNT[:SKIP]]")
    count = int(parts[2]) if len(parts) > 2 else 1
    skip = int(parts[3]) if len(parts) > 3 else 0
    return parts[0], int(parts[1]), count, skip


def lose(drops, direction, dg):
    """Whether to lose this datagram (and say so)."""
    rule = drops.get((direction, len(dg)))
    if rule is None or rule[1] <= 0:
        return False
    if rule[0] > 0:
        rule[0] -= 1
        return False
    rule[1] -= 1
    print(f"dropped {direction} {len(dg)}", flush=True)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=addr, required=True)
    ap.add_argument("--server", type=addr, required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--drop", action="append", default=[], type=drop_spec)
    args = ap.parse_args()
    drops = {}  # (direction, length) -> [how many to let pass first, how many to lose]
    for direction, length, count, skip in args.drop:
        drops[(direction, length)] = [skip, count]
    delay = args.delay_ms / 1000.0

    sel = selectors.DefaultSelector()
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind(args.listen)
    front.setblocking(False)
    sel.register(front, selectors.EVENT_READ, None)
    upstream = {}  # client address -> socket towards the server
    due = []  # (time, n, socket, datagram, destination)
    order = itertools.count()
    counts = {"up": 0, "down": 0}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print(f"relaying {args.listen[0]}:{args.listen[1]} -> {args.server[0]}:{args.server[1]} "
          f"with {args.delay_ms:.0f} ms each way", flush=True)

    while not stop:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else 0.5
        for key, _ in sel.select(timeout):
            sock, client = key.fileobj, key.data
            while True:
                try:
                    dg, src = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # an ICMP error from an earlier send: UDP loses datagrams
                now = time.monotonic()
                if client is None:  # from a client, towards the server
                    if lose(drops, "up", dg):
                        continue
                    up = upstream.get(src)
                    if up is None:
                        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        up.setblocking(False)
                        up.connect(args.server)
                        sel.register(up, selectors.EVENT_READ, src)
                        upstream[src] = up
                    heapq.heappush(due, (now + delay, next(order), up, dg, None))
                    counts["up"] += 1
                else:  # from the server, back to `client`
                    if lose(drops, "down", dg):
                        continue
                    heapq.heappush(due, (now + delay, next(order), front, dg, client))
                    counts["down"] += 1
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, sock, dg, dst = heapq.heappop(due)
            try:
                if dst is None:
                    sock.send(dg)
                else:
                    sock.sendto(dg, dst)
            except OSError:
                pass  # lost, as UDP may
    print(f"relayed up={counts['up']} down={counts['down']} clients={len(upstream)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
