#!/usr/bin/env python3
"""How long one fdatasync takes when 1, 2 or 3 processes flush the same disk at once.

Three members of a cluster on one host share its disk: every write is one flush per
member, and the disk serves the flushes one after another. This prints the p50/p99
latency of a 330-byte write + fdatasync (a one-entry Raft batch) with 1, 2 and 3
writers, each on its own preallocated file in DIR.

Usage: bench/fsync_contention.py [DIR] [SYNCS per writer]   (defaults /tmp and 1500)
"""
import os
import sys
import tempfile
import time
from multiprocessing import Process, Queue


def writer(directory, syncs, results):
    fd, path = tempfile.mkstemp(dir=directory, prefix="fsync-contention-")
    try:
        os.posix_fallocate(fd, 0, 8 << 20)
        os.fsync(fd)
        latencies = []
        for _ in range(syncs):
            os.write(fd, b"x" * 330)
            start = time.perf_counter()
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()
    results.put((latencies[len(latencies) // 2] * 1e6, latencies[int(len(latencies) * 0.99)] * 1e6))


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
    try:
        syncs = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
    except ValueError:
        sys.exit(f"fsync_contention: SYNCS must be a whole number, not {sys.argv[2]!r}")
    if syncs < 1:
        sys.exit(f"fsync_contention: SYNCS must be at least 1, not {syncs}")
    if not os.path.isdir(directory):
        sys.exit(f"fsync_contention: {directory}: not a directory")
    print(f"write 330 B + fdatasync, {syncs} per writer, files in {directory}")
    print("| writers at once | fdatasync p50 µs | fdatasync p99 µs |")
    print("|---:|---:|---:|")
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
        print(f"| {count} | {p50:.0f} | {p99:.0f} |")


if __name__ == "__main__":
    main()
