#!/usr/bin/env python3
"""A UDP relay with an on-path attacker's powers, for the review probes of roaming
(tests/roam_review.rs). Like tests/tools/roam_relay.py it is a NAT between dtun clients and
their server, run inside the test's own middle namespace; it only ever sends to --server and
back to the clients that wrote to its --link addresses. It can relay several clients at once
(one --link each), and never decrypts anything: it copies, holds and re-sends records.

  roam_review_relay.py --server IP:PORT --link NAME=IP:PORT [--link NAME=IP:PORT ...]

Each datagram a client sends to its link's address goes to --server from the link's upstream
socket (its NAT mapping); what the server sends back there goes to that client. Prints
"relaying link=NAME ... port=P" per link once bound, and "captured link=NAME cid=HEX" when a
client's records show a connection ID not seen before (first byte 25, the CID at 11..19).

Commands, one a line on stdin; the K-th command (from 1) answers with lines starting "#K ".
Only records with a connection ID (type 25) are ever copied or held.

  mirror L on MAXLEN   from now on each record of link L goes to the server first from one
                       extra socket of the relay (the mirror), then as usual from the upstream
                       socket: the copy wins every race. Datagrams the server sends to the
                       mirror go on to the client when at most MAXLEN bytes long (0: none, as
                       an attacker who reads nothing back; 65535: all, a full relay). Each is
                       printed: "mirror link=L port=P got len=N passed=0|1".
                       Answers "#K mirror link=L port=P"
  mirror L off         stops copying; the mirror socket stays open (still printed and passed
                       on as set): "#K mirror link=L off"
  pass L MAXLEN        changes the mirror's MAXLEN: "#K pass link=L maxlen=N"
  spray L N            each of L's next N records goes first from a fresh socket of its own,
                       then as usual: "#K sprayed link=L n=N ports=P1,P2,..." once done.
                       Datagrams to those sockets are printed "side port=P got len=N" and
                       never passed on
  switch L [keep]      a fresh upstream socket (a new source port) for link L, as a NAT that
                       lost its mapping; the old one is closed, or with "keep" kept open (what
                       comes back to it is printed "old port=P got len=N", never passed on):
                       "#K switched link=L port=NEW old=OLD"
  hold L epoch|N FROM  the next record of L is not passed on ("#K held link=L epoch=E seq=S
                       len=N"); once a record of a newer epoch (epoch) or N newer records
                       have gone to the server it goes there from FROM: "side" (a fresh
                       socket) or "old" (the last upstream socket kept by "switch L keep"):
                       "#K released link=L epoch=E seq=S newest=E2/S2 port=P"
  oldcopy L            the next record of L goes first from the kept old upstream socket, then
                       as usual: "#K oldcopied link=L epoch=E seq=S port=P"
  cross A B            the next record of link A is also sent, first, from link B's upstream
                       socket (B's address): "#K crossed from=A via=B cid=HEX port=P"
  flip L on|off        from now on each record of L goes first from one of two extra sockets
                       (then as usual): the other one than the last record's, except that a
                       record right after a path challenge (a datagram of exactly 47 bytes)
                       came to one of them goes from that one (it likely carries the answer).
                       Everything the server sends to them goes on to the client (a full
                       relay): "#K flip link=L ports=P0,P1" / "#K flip link=L off"
  stats L              "#K stats link=L up=N down=N mirror_got=N mirror_passed=N side_got=N
                       old_got=N flip_got=N port=P"

On SIGTERM it prints the stats of every link. Python standard library only.
"""

import argparse
import os
import selectors
import signal
import socket
import sys

CID_RECORD = 25
CID_LEN = 8


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def say(text):
    print(text, flush=True)


def header(dg):
    """(type, epoch, sequence) of a datagram's first record, or None."""
    if len(dg) < 13:
        return None
    return dg[0], int.from_bytes(dg[3:5], "big"), int.from_bytes(dg[5:11], "big")


class Link:
    def __init__(self, relay, name, listen):
        self.relay = relay
        self.name = name
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(listen)
        self.front.setblocking(False)
        relay.sel.register(self.front, selectors.EVENT_READ, ("front", self))
        self.up = relay.connected("up", self)
        self.old = None
        self.client = None
        self.cid = None
        self.newest = (0, 0)
        self.mirror = None
        self.mirror_on = False
        self.mirror_max = 0
        self.spray = None  # [K, left, ports]
        self.hold = None  # [K, mode, n, frm, held, newer]
        self.oldcopy = None  # K
        self.cross = None  # [K, other link]
        self.flip = None  # [socket 0, socket 1]
        self.flip_on = False
        self.flip_next = 0
        self.counts = dict(up=0, down=0, mirror_got=0, mirror_passed=0, side_got=0, old_got=0,
                           flip_got=0)

    def port(self, s):
        return s.getsockname()[1]

    def to_client(self, dg):
        if self.client is not None:
            try:
                self.front.sendto(dg, self.client)
                return True
            except OSError:
                pass
        return False

    def from_client(self, dg, src):
        self.client = src
        h = header(dg)
        if not (h and h[0] == CID_RECORD and len(dg) >= 11 + CID_LEN):
            self.send(self.up, dg)
            self.counts["up"] += 1
            return
        cid = dg[11:11 + CID_LEN]
        if cid != self.cid:
            self.cid = cid
            say(f"captured link={self.name} cid={cid.hex()}")
        if self.hold is not None and self.hold[4] is None:
            self.hold[4] = dg
            say(f"#{self.hold[0]} held link={self.name} epoch={h[1]} seq={h[2]} len={len(dg)}")
            return
        if self.cross is not None:
            k, other = self.cross
            self.cross = None
            self.send(other.up, dg)
            say(f"#{k} crossed from={self.name} via={other.name} cid={cid.hex()} "
                f"port={self.port(other.up)}")
        if self.oldcopy is not None and self.old is not None:
            k = self.oldcopy
            self.oldcopy = None
            self.send(self.old, dg)
            say(f"#{k} oldcopied link={self.name} epoch={h[1]} seq={h[2]} port={self.port(self.old)}")
        if self.spray is not None:
            s = self.relay.connected("side", self)
            self.send(s, dg)
            self.spray[2].append(str(self.port(s)))
            self.spray[1] -= 1
            if self.spray[1] == 0:
                k, _, ports = self.spray
                self.spray = None
                say(f"#{k} sprayed link={self.name} n={len(ports)} ports={','.join(ports)}")
        if self.mirror_on:
            self.send(self.mirror, dg)
        if self.flip_on:
            self.send(self.flip[self.flip_next], dg)
            self.flip_next = 1 - self.flip_next
        self.send(self.up, dg)
        self.counts["up"] += 1
        self.newest = max(self.newest, (h[1], h[2]))
        self.maybe_release(h)

    def maybe_release(self, h):
        if self.hold is None or self.hold[4] is None:
            return
        k, mode, n, frm, held, newer = self.hold
        hh = header(held)
        self.hold[5] += 1
        due = h[1] > hh[1] if mode == "epoch" else self.hold[5] >= n
        if not due:
            return
        self.hold = None
        if frm == "old" and self.old is not None:
            s = self.old
        else:
            s = self.relay.connected("side", self)
        self.send(s, held)
        say(f"#{k} released link={self.name} epoch={hh[1]} seq={hh[2]} "
            f"newest={self.newest[0]}/{self.newest[1]} port={self.port(s)}")

    @staticmethod
    def send(s, dg):
        try:
            s.send(dg)
        except OSError:
            pass  # an ICMP error from an earlier send: UDP loses datagrams

    def stats(self):
        c = self.counts
        return (f"link={self.name} up={c['up']} down={c['down']} mirror_got={c['mirror_got']} "
                f"mirror_passed={c['mirror_passed']} side_got={c['side_got']} "
                f"old_got={c['old_got']} flip_got={c['flip_got']} port={self.port(self.up)}")


class Relay:
    def __init__(self, server, links):
        self.server = server
        self.sel = selectors.DefaultSelector()
        self.links = {}
        for name, listen in links:
            self.links[name] = Link(self, name, listen)
        self.commands = 0
        self.pending = b""

    def connected(self, kind, link):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect(self.server)
        self.sel.register(s, selectors.EVENT_READ, (kind, link))
        return s

    def link(self, k, name):
        link = self.links.get(name)
        if link is None:
            say(f"#{k} refused: no link {name}")
        return link

    def command(self, line):
        self.commands += 1
        k = self.commands
        w = line.split()
        try:
            self.do(k, w)
        except (ValueError, IndexError) as e:
            say(f"#{k} refused: {line!r}: {e}")

    def do(self, k, w):
        cmd = w[0]
        if cmd in ("mirror", "pass", "spray", "switch", "hold", "oldcopy", "flip", "stats"):
            link = self.link(k, w[1])
            if link is None:
                return
        if cmd == "mirror" and w[2] == "on":
            if link.mirror is None:
                link.mirror = self.connected("mirror", link)
            link.mirror_max = int(w[3])
            link.mirror_on = True
            say(f"#{k} mirror link={link.name} port={link.port(link.mirror)}")
        elif cmd == "mirror" and w[2] == "off":
            link.mirror_on = False
            say(f"#{k} mirror link={link.name} off")
        elif cmd == "pass":
            link.mirror_max = int(w[2])
            say(f"#{k} pass link={link.name} maxlen={link.mirror_max}")
        elif cmd == "spray":
            link.spray = [k, int(w[2]), []]
        elif cmd == "switch":
            old = link.up
            link.up = self.connected("up", link)
            if len(w) > 2 and w[2] == "keep":
                self.sel.modify(old, selectors.EVENT_READ, ("old", link))
                if link.old is not None:
                    self.sel.unregister(link.old)
                    link.old.close()
                link.old = old
            else:
                self.sel.unregister(old)
                old.close()
            say(f"#{k} switched link={link.name} port={link.port(link.up)} old={link.port(old)}")
        elif cmd == "hold":
            mode = "epoch" if w[2] == "epoch" else "count"
            n = 0 if mode == "epoch" else int(w[2])
            link.hold = [k, mode, n, w[3], None, 0]
        elif cmd == "oldcopy":
            if link.old is None:
                say(f"#{k} refused: no old socket kept")
                return
            link.oldcopy = k
        elif cmd == "cross":
            a, b = self.link(k, w[1]), self.link(k, w[2])
            if a is None or b is None:
                return
            a.cross = [k, b]
        elif cmd == "flip" and w[2] == "on":
            if link.flip is None:
                link.flip = [self.connected(("flip", 0), link), self.connected(("flip", 1), link)]
            link.flip_on = True
            say(f"#{k} flip link={link.name} "
                f"ports={link.port(link.flip[0])},{link.port(link.flip[1])}")
        elif cmd == "flip" and w[2] == "off":
            link.flip_on = False
            say(f"#{k} flip link={link.name} off")
        elif cmd == "stats":
            say(f"#{k} stats {link.stats()}")
        else:
            say(f"#{k} unknown command {' '.join(w)!r}")

    def datagram(self, kind, link, sock, dg, src):
        if kind == "front":
            link.from_client(dg, src)
        elif kind == "up":
            if link.to_client(dg):
                link.counts["down"] += 1
        elif kind == "mirror":
            link.counts["mirror_got"] += 1
            passed = len(dg) <= link.mirror_max and link.to_client(dg)
            if passed:
                link.counts["mirror_passed"] += 1
            say(f"mirror link={link.name} port={link.port(sock)} got len={len(dg)} "
                f"passed={int(passed)}")
        elif isinstance(kind, tuple):
            link.counts["flip_got"] += 1
            if len(dg) == 47:
                link.flip_next = kind[1]
            link.to_client(dg)
        elif kind == "old":
            link.counts["old_got"] += 1
            say(f"old link={link.name} port={link.port(sock)} got len={len(dg)}")
        else:
            link.counts["side_got"] += 1
            say(f"side link={link.name} port={link.port(sock)} got len={len(dg)}")

    def run(self, stop):
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        self.sel.register(stdin, selectors.EVENT_READ, ("stdin", None))
        for link in self.links.values():
            f = link.front.getsockname()
            say(f"relaying link={link.name} {f[0]}:{f[1]} -> {self.server[0]}:{self.server[1]} "
                f"port={link.port(link.up)}")
        while not stop:
            for key, _ in self.sel.select(0.5):
                kind, link = key.data
                if kind == "stdin":
                    self.read_stdin(stdin)
                    continue
                sock = key.fileobj
                while True:
                    try:
                        dg, src = sock.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break  # an ICMP error from an earlier send
                    self.datagram(kind, link, sock, dg, src)
        for link in self.links.values():
            say(f"stats {link.stats()}")

    def read_stdin(self, fd):
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            self.sel.unregister(fd)
            return
        self.pending += data
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            if line.strip():
                self.command(line.decode(errors="replace").strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", type=addr, required=True)
    ap.add_argument("--link", action="append", required=True,
                    type=lambda t: (t.split("=", 1)[0], addr(t.split("=", 1)[1])))
    args = ap.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    Relay(args.server, args.link).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
