#!/usr/bin/env python3
"""Turns scripts/bench.sh's raw results into a Markdown table.

  table.py row DIR                 one line of progress for one row's directory
  table.py table RESULTS ELAPSED   the whole table (RESULTS holds veth/ and NN-key/ rows)

RESULTS may hold `baseline`, the path of DTUN_BASELINE's binary, whose rows are keyed
"baseline-KEY" after the row KEY of this tree's binary; the table then gives each pair's
new/old forward median ratio.

A row's directory holds: label, status ("ok" or "failed: why"), fwd1.json..fwd3.json and
rev.json (iperf3 -J), ping.txt (ping output), cpu_ticks and clk_tck (utime+stime of both
tunnel processes over the forward runs), and for dtun rss_kb (server VmRSS, one client).
"""

import datetime
import json
import os
import platform
import re
import statistics
import sys


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def iperf(path):
    """(Mbit/s, bytes) received in one iperf3 run, or None."""
    try:
        with open(path) as f:
            r = json.load(f)["end"]["sum_received"]
        return r["bits_per_second"] / 1e6, r["bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ping_ms(path):
    """Median RTT in ms of the replies in a ping output, or None."""
    text = read(path, "")
    times = [float(t) for t in re.findall(r"time=([0-9.]+) ms", text)]
    return statistics.median(times) if times else None


class Row:
    def __init__(self, d):
        self.dir = d
        self.key = os.path.basename(d).split("-", 1)[-1]
        self.label = read(os.path.join(d, "label"), self.key)
        self.status = read(os.path.join(d, "status"), "failed: unfinished")
        runs = [iperf(os.path.join(d, f"fwd{i}.json")) for i in (1, 2, 3)]
        self.runs = [r for r in runs if r]
        self.fwd = statistics.median(r[0] for r in self.runs) if self.runs else None
        rev = iperf(os.path.join(d, "rev.json"))
        self.rev = rev[0] if rev else None
        self.rtt = ping_ms(os.path.join(d, "ping.txt"))
        self.bare_rtt = ping_ms(os.path.join(d, "bare-ping.txt"))
        self.cpu_per_gbit = None
        ticks, hz = read(os.path.join(d, "cpu_ticks")), read(os.path.join(d, "clk_tck"))
        if ticks and hz and len(self.runs) == 3:
            gbits = sum(r[1] for r in self.runs) * 8 / 1e9
            if gbits > 0:
                self.cpu_per_gbit = int(ticks) / int(hz) / gbits
        rss = read(os.path.join(d, "rss_kb"))
        self.rss_mib = int(rss) / 1024 if rss else None

    @property
    def ok(self):
        return self.status == "ok"


def fmt(x, spec, missing="–"):
    return missing if x is None else format(x, spec)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def row_line(r):
    if not r.ok:
        return f"{r.label}: {r.status}"
    runs = ", ".join(f"{x[0]:.0f}" for x in r.runs)
    s = (f"{r.label}: forward {r.fwd:.0f} Mbit/s (runs {runs}), reverse {fmt(r.rev, '.0f')},"
         f" RTT {fmt(r.rtt, '.3f')} ms, {fmt(r.cpu_per_gbit, '.2f')} CPU-s/Gbit")
    if r.rss_mib is not None:
        s += f", server VmRSS {r.rss_mib:.1f} MiB"
    return s


def baseline_ratios(rows):
    """'LABEL: forward new/old R×, CPU-s/Gbit new/old C×' for each baseline row and its row."""
    by_key = {r.key: r for r in rows}
    out = []
    for old in rows:
        if not old.key.startswith("baseline-"):
            continue
        new = by_key.get(old.key[len("baseline-"):])
        if new is None:
            continue
        name = new.label
        if not (new.ok and old.ok):
            out.append(f"{name}: – (a row failed)")
            continue
        out.append(f"{name}: forward {ratio(new.fwd, old.fwd)}, "
                   f"CPU-s/Gbit {ratio(new.cpu_per_gbit, old.cpu_per_gbit)}")
    return out


def table(results, elapsed):
    bench_time = os.environ.get("BENCH_TIME", "10")
    rows = [Row(os.path.join(results, n)) for n in sorted(os.listdir(results))
            if re.match(r"\d\d-", n)]
    veth_fwd = iperf(os.path.join(results, "veth", "fwd1.json"))
    veth_rtt = ping_ms(os.path.join(results, "veth", "ping.txt"))
    by_key = {r.key: r for r in rows}
    gcm = by_key.get("dtun")
    ccm = by_key.get("dtun-ccm8")
    gcm_fwd = gcm.fwd if gcm and gcm.ok else None
    ccm_fwd = ccm.fwd if ccm and ccm.ok else None

    now = datetime.datetime.now().astimezone()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), "?")
    except OSError:
        cpu = "?"
    out = []
    out.append(f"Benchmark of {now:%Y-%m-%d %H:%M %Z}: `nproc` {len(os.sched_getaffinity(0))}"
               f" ({cpu}), Linux {platform.release()}; "
               f"`scripts/bench.sh`, iperf3 TCP between two network namespaces over one veth, "
               f"{bench_time} s per run, in {elapsed} s.")
    out.append("")
    h_gcm = "dtun default ×"
    h_ccm = "dtun ccm8 ×"
    out.append(f"| tunnel | forward Mbit/s (median of 3) | reverse Mbit/s | RTT ms (added) "
               f"| CPU-s/Gbit | {h_gcm} | {h_ccm} |")
    out.append("|---|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        if not r.ok:
            reason = r.status[len("failed: "):] if r.status.startswith("failed: ") else r.status
            out.append(f"| {r.label} | failed ({reason}) | | | | | |")
            continue
        base = r.bare_rtt if r.bare_rtt is not None else veth_rtt
        if r.rtt is not None and base is not None:
            rtt = f"{r.rtt:.3f} (+{r.rtt - base:.3f})"
        else:
            rtt = fmt(r.rtt, ".3f")
        out.append(f"| {r.label} | {r.fwd:.0f} | {fmt(r.rev, '.0f')} | {rtt} "
                   f"| {fmt(r.cpu_per_gbit, '.2f')} | {ratio(gcm_fwd, r.fwd)} "
                   f"| {ratio(ccm_fwd, r.fwd)} |")
    out.append("")
    baseline = read(os.path.join(results, "baseline"))
    if baseline:
        out.append(f"New/old (this tree's dtun over DTUN_BASELINE `{baseline}`, the rows right "
                   "after each other): " + "; ".join(baseline_ratios(rows) or ["no pair"]) + ".")
        out.append("")
    notes = []
    load, load_end = read(os.path.join(results, "loadavg")), read(os.path.join(results, "loadavg_end"))
    if load:
        notes.append(f"load average (1, 5, 15 min) before the run: {load}, after: "
                     f"{load_end or '?'}; the run itself adds about 2, anything beyond is other "
                     f"work skewing the figures (compare rows of one run only)")
    if veth_fwd or veth_rtt is not None:
        notes.append(f"bare veth (no tunnel): {fmt(veth_fwd[0] if veth_fwd else None, '.0f')} "
                     f"Mbit/s, RTT {fmt(veth_rtt, '.3f')} ms")
    bare = [f"{r.label} {r.bare_rtt:.3f}" for r in rows if r.bare_rtt is not None]
    if bare:
        notes.append("bare veth RTT during each row's pings (ms): " + "; ".join(bare))
    for r in rows:
        if r.rss_mib is not None:
            notes.append(f"{r.label} server VmRSS with one client: {r.rss_mib:.1f} MiB")
    notes.append("forward runs (Mbit/s): " + "; ".join(
        f"{r.label} " + "/".join(f"{x[0]:.0f}" for x in r.runs) for r in rows if r.runs))
    pings = os.environ.get("BENCH_PINGS", "200")
    out.append(f"RTT: median of {pings} pings, 50 ms apart, through the tunnel (added: less the "
               "median of the bare veth's, pinged during the same seconds, 25 ms out of step). "
               "CPU-s/Gbit: utime+stime of both tunnel processes (all threads) over the "
               "three forward runs, per Gbit received. × columns: that dtun row's forward "
               "median over this row's.")
    out.append("")
    for n in notes:
        out.append(f"- {n}")
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) == 3 and argv[1] == "row":
        print(row_line(Row(argv[2])))
        return 0
    if len(argv) == 4 and argv[1] == "table":
        sys.stdout.write(table(argv[2], argv[3]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
