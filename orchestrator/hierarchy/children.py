"""The learners enrolled with an edge aggregator, and its own upstream identity, on disk.

One JSON file in the aggregator's data directory, written atomically (temp file, fsync,
rename, fsync of the directory) before an enrolment is answered: after a restart the children
keep their ids and tokens (their heartbeats are accepted again) and the aggregator re-enrols
upstream under its own secret. Heartbeat times live in memory only.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.store import write_atomic

NAME_OK = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_FACTS_BYTES = 16_384
MAX_ENDPOINT_CHARS = 300


def token_digest(token: str) -> bytes:
    # Tokens are looked up by their SHA-256, so the lookup leaks nothing usable about a token.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class EnrolError(ValueError):
    """An enrolment refused; ``status`` and ``code`` are the HTTP answer."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


@dataclass
class Child:
    """One enrolled learner: its id, name, token (its secret), RPC endpoint ("" when it is
    served through the aggregator's relay) and facts."""

    id: int
    name: str
    token: str
    endpoint: str
    facts: dict[str, Any] = field(default_factory=dict)


def check_enrolment(name: Any, endpoint: Any, facts: Any) -> None:
    """Raise EnrolError unless the name, endpoint and facts are well-formed and bounded."""
    if not isinstance(name, str) or not NAME_OK.match(name):
        raise EnrolError(400, "bad_name", "name: 1-64 letters, digits, '_', '.' or '-'")
    if endpoint is None or endpoint == "":
        pass  # behind NAT: served through the aggregator's relay
    elif not isinstance(endpoint, str) or len(endpoint) > MAX_ENDPOINT_CHARS \
            or not endpoint.startswith(("http://", "https://")):
        raise EnrolError(400, "bad_endpoint", "endpoint must be an http(s) URL of at most "
                         f"{MAX_ENDPOINT_CHARS} characters")
    if not isinstance(facts, dict) or len(json.dumps(facts)) > MAX_FACTS_BYTES:
        raise EnrolError(400, "bad_facts", f"facts must be an object of at most "
                         f"{MAX_FACTS_BYTES} bytes of JSON")


class Children:
    """The aggregator's persistent state: children, upstream identity, per-task shares."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.children: dict[str, Child] = {}
        self.upstream: dict[str, Any] = {}  # learner_id and token the upstream gave us
        self.shares: dict[str, dict[str, int]] = {}  # task id -> child name -> share
        self.next_id = 1
        self._seen: dict[int, float] = {}
        # Token digest -> child name: one dict lookup per request, however many children.
        self._by_token: dict[bytes, str] = {}
        if path.exists():
            doc = json.loads(path.read_text())
            self.children = {c["name"]: Child(**c) for c in doc.get("children", [])}
            self.upstream = dict(doc.get("upstream", {}))
            self.shares = {k: dict(v) for k, v in doc.get("shares", {}).items()}
            self.next_id = int(doc.get("next_id", 1))
        self._by_token = {token_digest(c.token): c.name for c in self.children.values()}

    def save(self) -> None:
        """Write the whole state atomically (fsync'd) — before an answer depends on it."""
        doc = {"children": [asdict(c) for c in self.children.values()],
               "upstream": self.upstream, "shares": self.shares, "next_id": self.next_id}
        write_atomic(self.path, json.dumps(doc, indent=1).encode())

    def enrol(self, name: Any, endpoint: Any, facts: Any, secret: str | None) -> Child:
        """Enrol (or re-enrol, with that child's current token as ``secret``) ``name``."""
        check_enrolment(name, endpoint, facts)
        with self._lock:
            old = self.children.get(name)
            if old is not None and not (secret and secrets.compare_digest(
                    token_digest(secret), token_digest(old.token))):
                raise EnrolError(409, "name_taken", f"a learner named {name!r} is enrolled "
                                 "here; re-enrolling needs its secret")
            if old is None:
                old = Child(self.next_id, name, secrets.token_urlsafe(32), endpoint, facts)
                self.next_id += 1
            child = Child(old.id, name, old.token, endpoint or "", facts)
            self.children[name] = child
            self.save()
            self._by_token[token_digest(child.token)] = name
            self._seen[child.id] = time.time()
            return child

    def by_token(self, token: str | None) -> Child | None:
        """The child this bearer token belongs to, or None."""
        if not token or len(token) > 256:
            return None
        name = self._by_token.get(token_digest(token))
        return self.children.get(name) if name is not None else None

    def heartbeat(self, child: Child, facts: Any) -> None:
        """Note that ``child`` is alive (and its fresh facts, when well-formed)."""
        if isinstance(facts, dict) and len(json.dumps(facts)) <= MAX_FACTS_BYTES:
            child.facts = facts
        self._seen[child.id] = time.time()

    def alive(self, horizon_s: float) -> list[Child]:
        """Children heard from within ``horizon_s`` seconds, in name order."""
        now = time.time()
        return sorted((c for c in self.children.values()
                       if now - self._seen.get(c.id, 0.0) <= horizon_s), key=lambda c: c.name)

    def set_shares(self, task_id: int, shares: dict[str, int]) -> None:
        """Remember how task ``task_id``'s allocations are dealt (DAB a_k, CSA compute)."""
        with self._lock:
            self.shares[str(task_id)] = shares
            self.save()
