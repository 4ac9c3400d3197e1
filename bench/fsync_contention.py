#!/usr/bin/env python3
"""How long one fdatasync takes when 1, 2 or 3 processes flush the same disk at once.

Three members of a cluster on one host share its disk: every write is one flush per
member, and the disk serves the flushes one after another. This prints the p50/p99
latency of a 330-byte write + fdatasync (a one-entry Raft batch) with 1, 2 and 3
writers, each on its own preallocated file in DIR, and the flushes that took over 5 ms:
how many, and how many of them ended at the same moment of a 100 ms period (on this VM,
under three writers, the disk stalls every 100 ms of wall-clock time for 10-20 ms; etcd
and worknode clusters see the same stalls).

Usage: bench/fsync_contention.py [DIR] [SYNCS per writer]   (defaults /tmp and 5000)
"""
import os
import sys
import tempfile
import time
from multiprocessing import Process, Queue


STALL_S = 0.005


def writer(directory, syncs, results):
    fd, path = tempfile.mkstemp(dir=directory, prefix="fsync-contention-")
    try:
        os.posix_fallocate(fd, 0, 8 << 20)
        os.fsync(fd)
        latencies = []
        stalls = []
        for _ in range(syncs):
            os.write(fd, b"x" * 330)
            start = time.perf_counter()
            os.fdatasync(fd)
            took = time.perf_counter() - start
            latencies.append(took)
            if took > STALL_S:
                stalls.append(int(time.time() * 1000) % 100)
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()
    results.put((latencies[len(latencies) // 2] * 1e6, latencies[int(len(latencies) * 0.99)] * 1e6, stalls))


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
    try:
        syncs = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    except ValueError:
        sys.exit(f"fsync_contention: SYNCS must be a whole number, not {sys.argv[2]!r}")
    if syncs < 1:
        sys.exit(f"fsync_contention: SYNCS must be at least 1, not {syncs}")
    if not os.path.isdir(directory):
        sys.exit(f"fsync_contention: {directory}: not a directory")
    print(f"write 330 B + fdatasync, {syncs} per writer, files in {directory}")
    print("| writers at once | fdatasync p50 µs | fdatasync p99 µs | over 5 ms | of those at one moment of a 100 ms period (±3 ms) |")
    print("|---:|---:|---:|---:|---:|")
    for count in (1, 2, 3):
        results = Queue()
        processes = [Process(target=writer, args=(directory, syncs, results)) for _ in range(count)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        measured = [results.get() for _ in processes]
        p50 = sum(m[0] for m in measured) / count
        p99 = sum(m[1] for m in measured) / count
        phases = [phase for m in measured for phase in m[2]]
        periodic = max(
            (sum(1 for p in phases if min((p - at) % 100, (at - p) % 100) <= 3) for at in range(100)),
            default=0,
        )
        print(f"| {count} | {p50:.0f} | {p99:.0f} | {len(phases)} | {periodic} |")


if __name__ == "__main__":
    main()
