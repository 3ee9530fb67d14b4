"""Probes run inside a learner's namespace and cgroups to measure what it really gets.

`python -m deploy.testbed.probe download URL` times an HTTP download (bytes/s);
`upload URL BYTES` times an HTTP upload; `link URL UPLOAD_URL BYTES` does both in one process;
`compute --seconds S` counts fixed units of pure-Python work per wall-clock second. Each prints
one JSON object. They stand in for the agent's subset benchmarking when checking the testbed
itself: the same quantities, without a task.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request

_CHUNK = 64 * 1024


def download(url: str, timeout: float = 60.0) -> dict[str, float]:
    """GET `url`, reading the body in chunks; bytes, seconds, and rate in bytes/s.

    The clock starts when the first byte arrives, so connection setup is not counted.
    """
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        first = answer.read(_CHUNK)
        start = time.perf_counter()
        total = 0
        while True:
            chunk = answer.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
        seconds = time.perf_counter() - start
    del first
    return {"bytes": float(total), "seconds": seconds, "rate": total / seconds}


def upload(url: str, size: int, timeout: float = 60.0) -> dict[str, float]:
    """POST `size` bytes to `url`; bytes, seconds, and rate in bytes/s (until the answer)."""
    body = b"\0" * size
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/octet-stream"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        answer.read()
    seconds = time.perf_counter() - start
    return {"bytes": float(size), "seconds": seconds, "rate": size / seconds}


def _work_unit() -> int:
    # A fixed amount of interpreter work (about a millisecond on a desktop core).
    acc = 0
    for i in range(20_000):
        acc = (acc + i * i) % 1_000_003
    return acc


def compute(seconds: float) -> dict[str, float]:
    """Run work units for about `seconds` of wall time; units per wall-clock second.

    Wall time, not CPU time: under a cgroup quota the process waits while throttled, and that
    waiting is exactly what makes a slow device slow. `cpu_share` is the CPU time the process
    got per wall-clock second: a quota bounds it from above whatever else the host runs.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    units = 0
    while time.perf_counter() - start < seconds:
        _work_unit()
        units += 1
    elapsed = time.perf_counter() - start
    cpu_share = (time.process_time() - cpu_start) / elapsed
    return {
        "units": float(units),
        "seconds": elapsed,
        "rate": units / elapsed,
        "cpu_share": cpu_share,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.testbed.probe", description=__doc__)
    sub = parser.add_subparsers(dest="probe", required=True)
    p_down = sub.add_parser("download", help="time an HTTP GET")
    p_down.add_argument("url")
    p_up = sub.add_parser("upload", help="time an HTTP POST of BYTES bytes")
    p_up.add_argument("url")
    p_up.add_argument("bytes", type=int)
    p_link = sub.add_parser("link", help="download from URL, then upload BYTES bytes to UPLOAD_URL")
    p_link.add_argument("url")
    p_link.add_argument("upload_url")
    p_link.add_argument("bytes", type=int)
    p_cpu = sub.add_parser("compute", help="count work units per second")
    p_cpu.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.probe == "download":
        result = download(args.url)
    elif args.probe == "upload":
        result = upload(args.url, args.bytes)
    elif args.probe == "link":
        got = download(args.url)
        sent = upload(args.upload_url, args.bytes)
        result = {"down": got["rate"], "up": sent["rate"]}
    else:
        result = compute(args.seconds)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
