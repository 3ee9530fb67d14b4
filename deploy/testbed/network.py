"""Network plumbing: a bridge, one namespace and veth pair per learner, tc htb rate caps.

Every name starts with `<prefix>-` so leftovers from a crashed run can be found and removed.
Only tc's htb is used: this kernel has no netem, so links get a rate cap but no added latency,
jitter or loss (docs/testbed.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess

from deploy.errors import CommandError, HostError
from deploy.testbed.profiles import tc_rate

# One htb class per link; everything that leaves the interface falls into it.
_HTB_HANDLE = "1:"
_HTB_CLASS = "1:10"


def run(
    argv: list[str], *, check: bool = True, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run a system command, raising CommandError with its stderr when it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise HostError(
            f"`{argv[0]}` is not installed; install iproute2 (apt install iproute2)"
        ) from exc
    if check and done.returncode != 0:
        raise CommandError(argv, done.returncode, done.stderr)
    return done


def require_tools() -> None:
    """Raise HostError unless `ip` and `tc` exist."""
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise HostError(f"`{tool}` is not on PATH; install iproute2 (apt install iproute2)")


def bridge_name(prefix: str) -> str:
    return f"{prefix}-br"


def host_if(prefix: str, index: int) -> str:
    """Root-namespace end of learner `index`'s veth pair (it sits on the bridge)."""
    return f"{prefix}-h{index}"


def ns_if(prefix: str, index: int) -> str:
    """Learner-namespace end of learner `index`'s veth pair."""
    return f"{prefix}-n{index}"


def netns_name(prefix: str, learner: str) -> str:
    return f"{prefix}-{learner}"


def create_bridge(name: str, address: str, prefixlen: int) -> None:
    """Create the bridge in the root namespace and give it the orchestrator's address."""
    run(["ip", "link", "add", name, "type", "bridge"])
    run(["ip", "addr", "add", f"{address}/{prefixlen}", "dev", name])
    run(["ip", "link", "set", name, "up"])


def create_learner_link(
    *, netns: str, host: str, inner: str, bridge: str, address: str, prefixlen: int
) -> None:
    """Create a namespace and a veth pair from it to the bridge; the learner gets `address`.

    The namespace gets no default route: a learner reaches only the subnet, never the outside.
    """
    run(["ip", "netns", "add", netns])
    run(["ip", "link", "add", host, "type", "veth", "peer", "name", inner])
    run(["ip", "link", "set", inner, "netns", netns])
    run(["ip", "link", "set", host, "master", bridge])
    run(["ip", "link", "set", host, "up"])
    run(["ip", "-n", netns, "addr", "add", f"{address}/{prefixlen}", "dev", inner])
    run(["ip", "-n", netns, "link", "set", inner, "up"])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])


def _burst_bytes(rate: float) -> int:
    # htb needs a bucket of at least one MTU-sized packet per timer tick; 10 ms of traffic (min
    # 16 KiB) keeps short bursts from overshooting the cap while letting TCP reach the rate.
    return max(16 * 1024, int(rate * 0.01))


def set_rate(device: str, rate: float, *, netns: str | None = None, replace: bool = False) -> None:
    """Cap what leaves `device` at `rate` bytes/s with an htb class (replace=True: change it)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    burst = str(_burst_bytes(rate))
    if not replace:
        run(
            [
                *prefix,
                "tc",
                "qdisc",
                "add",
                "dev",
                device,
                "root",
                "handle",
                _HTB_HANDLE,
                "htb",
                "default",
                "10",
            ]
        )
    verb = "change" if replace else "add"
    run(
        [
            *prefix,
            "tc",
            "class",
            verb,
            "dev",
            device,
            "parent",
            _HTB_HANDLE,
            "classid",
            _HTB_CLASS,
            "htb",
            "rate",
            tc_rate(rate),
            "ceil",
            tc_rate(rate),
            "burst",
            burst,
            "cburst",
            burst,
        ]
    )


_TC_RATE = re.compile(r"\brate ([0-9.]+)([KMG]?)bit\b")
_TC_SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}


def read_rate(device: str, *, netns: str | None = None) -> float | None:
    """The htb rate on `device` in bytes/s, or None when it has no htb class.

    `tc -j` prints no JSON for htb classes on this iproute2, so the text form is parsed.
    """
    prefix = ["ip", "netns", "exec", netns] if netns else []
    done = run([*prefix, "tc", "class", "show", "dev", device], check=False)
    for line in done.stdout.splitlines():
        if line.startswith(f"class htb {_HTB_CLASS} "):
            match = _TC_RATE.search(line)
            if match:
                return float(match.group(1)) * _TC_SCALE[match.group(2)] / 8
    return None


def set_link(device: str, up: bool) -> None:
    """Bring a root-namespace link up or down (a learner's link fault)."""
    run(["ip", "link", "set", device, "up" if up else "down"])


def link_state(device: str) -> str | None:
    """`up`, `down` (administratively), or None when the device does not exist."""
    done = run(["ip", "-j", "link", "show", "dev", device], check=False)
    if done.returncode != 0:
        return None
    info = json.loads(done.stdout)[0]
    return "up" if "UP" in info.get("flags", []) else "down"


def list_netns(prefix: str) -> list[str]:
    """Namespaces whose name starts with `<prefix>-`."""
    done = run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(f"{prefix}-")]


def list_links(prefix: str) -> list[str]:
    """Root-namespace links whose name starts with `<prefix>-`."""
    done = run(["ip", "-j", "link", "show"], check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return []
    return [i["ifname"] for i in json.loads(done.stdout) if i["ifname"].startswith(f"{prefix}-")]


def netns_pids(netns: str) -> list[int]:
    """Processes living in a namespace (what `ip netns pids` reports)."""
    done = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def delete_netns(netns: str) -> None:
    """Delete a namespace; the veth end inside it goes with it, and so does its peer."""
    run(["ip", "netns", "delete", netns], check=False)
    # `ip netns delete` leaves the bind mount file when the namespace was half made.
    path = f"/run/netns/{netns}"
    if os.path.exists(path):
        run(["umount", path], check=False)
        with contextlib.suppress(OSError):
            os.unlink(path)


def delete_link(device: str) -> None:
    """Delete a root-namespace link (its qdisc goes with it); a missing link is fine."""
    run(["ip", "link", "delete", device], check=False)
