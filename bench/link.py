#!/usr/bin/env python3
"""link.py: a network link between two network namespaces, with a rate, a delay and a
random loss each way, for kernels built without netem (this one has no sch_netem).

A TUN device in each namespace; this process carries every IP packet from one to the
other. Each direction is a FIFO with a serialization time of size * 8 / rate, a constant
one-way delay, a tail drop once the queue holds LIMIT packets' worth of time, and a
random loss. TCP between the namespaces sees a real link: its round trip, its bottleneck
and its losses.

    bench/link.py --ns-a A --addr-a 192.168.242.1/24 --ns-b B --addr-b 192.168.242.2/24 \\
        --rate 100 --delay 20 [--loss 0.5] [--mtu 1500] [--limit 1000]

--rate in Mbit/s, --delay in ms one way (the round trip is twice it), --loss in percent
each way. Prints "ready" on stdout once both ends are up; runs until it is killed.
SIGUSR1 cuts the link (every packet is dropped, both ways) and the next SIGUSR1 mends it.
"""

import argparse
import collections
import fcntl
import os
import random
import select
import signal
import struct
import subprocess
import sys
import threading
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def ip(*args):
    subprocess.run(["ip", *args], check=True)


cut = threading.Event()


def carry(src, dst, rate_bps, delay_s, loss, limit_s, counters):
    """Moves packets from src to dst, shaped; never returns."""
    queue = collections.deque()
    last_departure = 0.0
    while True:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, packet = queue.popleft()
            try:
                os.write(dst, packet)
            except BlockingIOError:
                counters["write_drops"] += 1
        timeout = max(0.0, queue[0][0] - now) if queue else 1.0
        readable, _, _ = select.select([src], [], [], timeout)
        if not readable:
            continue
        for _ in range(256):
            try:
                packet = os.read(src, 65536)
            except BlockingIOError:
                break
            now = time.monotonic()
            if cut.is_set():
                counters["cut"] += 1
                continue
            if loss and random.random() < loss:
                counters["lost"] += 1
                continue
            start = max(now, last_departure)
            if start - now > limit_s:
                counters["queue_drops"] += 1
                continue
            last_departure = start + len(packet) * 8 / rate_bps
            queue.append((last_departure + delay_s, packet))
            counters["packets"] += 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ns-a", required=True)
    p.add_argument("--addr-a", required=True)
    p.add_argument("--ns-b", required=True)
    p.add_argument("--addr-b", required=True)
    p.add_argument("--rate", type=float, required=True, help="Mbit/s each way")
    p.add_argument("--delay", type=float, required=True, help="ms one way")
    p.add_argument("--loss", type=float, default=0.0, help="percent each way")
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--limit", type=int, default=1000, help="queue, in packets of MTU size")
    args = p.parse_args()
    if not (args.rate > 0 and args.delay >= 0 and 0 <= args.loss < 100 and args.mtu >= 576):
        sys.exit("link.py: --rate above 0, --delay 0 or more, --loss in [0, 100), --mtu 576 or more")

    tag = str(os.getpid())[-6:]
    ends = []
    for ns, addr, side in ((args.ns_a, args.addr_a, "a"), (args.ns_b, args.addr_b, "b")):
        name = f"lk{side}{tag}"
        fd = open_tun(name)
        # The device moves into the namespace; this process keeps its end.
        ip("link", "set", "dev", name, "netns", ns)
        ip("-n", ns, "link", "set", "dev", name, "mtu", str(args.mtu))
        ip("-n", ns, "addr", "add", addr, "dev", name)
        ip("-n", ns, "link", "set", "dev", name, "up")
        ends.append(fd)

    rate_bps = args.rate * 1e6
    limit_s = args.limit * args.mtu * 8 / rate_bps
    counters = [collections.Counter(), collections.Counter()]
    for (src, dst), count in zip(((ends[0], ends[1]), (ends[1], ends[0])), counters):
        threading.Thread(
            target=carry,
            args=(src, dst, rate_bps, args.delay / 1000, args.loss / 100, limit_s, count),
            daemon=True,
        ).start()
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGUSR1, lambda *_: cut.clear() if cut.is_set() else cut.set())
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for side, count in zip("ab", counters):
            print(f"from {side}: {dict(count)}", file=sys.stderr)


if __name__ == "__main__":
    main()
