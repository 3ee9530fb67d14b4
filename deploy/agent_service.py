"""Run `plexus agent run` from an installed config file and a private join-token file.

`deploy/install-agent.sh` writes both and points systemd (or the `plexus-agent` wrapper in
`--no-systemd` installs) at `python -m deploy.agent_service --config FILE`. The token is read
here and handed to the CLI in-process, so it never appears on a command line (which every user
of the device can read in /proc) or in the environment.

The config file holds `KEY=VALUE` lines (`#` starts a comment):

    PLEXUS_ORCHESTRATOR=https://orchestrator.lan:8443   # required
    PLEXUS_JOIN_TOKEN_FILE=/etc/plexus-agent/join-token  # required, mode 0600 or 0400
    PLEXUS_NAME=pi-kitchen        PLEXUS_RELAY=0        PLEXUS_HOST=0.0.0.0
    PLEXUS_PORT=8701              PLEXUS_DATA_DIR=/var/lib/plexus-agent
    SSL_CERT_FILE=/etc/plexus-agent/ca.pem   # trust a private CA for an https orchestrator
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from deploy.errors import AgentConfigError

_KNOWN = {
    "PLEXUS_ORCHESTRATOR",
    "PLEXUS_JOIN_TOKEN_FILE",
    "PLEXUS_NAME",
    "PLEXUS_RELAY",
    "PLEXUS_HOST",
    "PLEXUS_PORT",
    "PLEXUS_DATA_DIR",
    "SSL_CERT_FILE",
}


def read_config(path: Path) -> dict[str, str]:
    """Parse a KEY=VALUE config file; unknown keys and missing required keys are errors."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise AgentConfigError(f"cannot read agent config {path}: {exc.strerror}") from exc
    config: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip().strip('"').strip("'")
        if not sep or key not in _KNOWN:
            raise AgentConfigError(
                f"{path}:{number}: expected KEY=VALUE with KEY one of {sorted(_KNOWN)}, got {raw!r}"
            )
        config[key] = value
    for required in ("PLEXUS_ORCHESTRATOR", "PLEXUS_JOIN_TOKEN_FILE"):
        if not config.get(required):
            raise AgentConfigError(f"{path}: {required} is missing; add {required}=... to it")
    return config


def read_token(path: Path) -> str:
    """Read the join token, refusing a file that users other than its owner can read."""
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as exc:
        raise AgentConfigError(f"cannot read join token file {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AgentConfigError(
            f"join token file {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`"
        )
    if not token:
        raise AgentConfigError(
            f"join token file {path} is empty; write the orchestrator's token to it"
        )
    return token


def agent_argv(config: dict[str, str], token: str) -> list[str]:
    """The `plexus` CLI arguments equivalent to the config (token included)."""
    argv = ["agent", "run", "--orchestrator", config["PLEXUS_ORCHESTRATOR"], "--join-token", token]
    if config.get("PLEXUS_NAME"):
        argv += ["--name", config["PLEXUS_NAME"]]
    if config.get("PLEXUS_RELAY", "0").lower() in ("1", "true", "yes"):
        argv.append("--relay")
    if config.get("PLEXUS_HOST"):
        argv += ["--host", config["PLEXUS_HOST"]]
    if config.get("PLEXUS_PORT"):
        argv += ["--port", config["PLEXUS_PORT"]]
    if config.get("PLEXUS_DATA_DIR"):
        argv += ["--data-dir", config["PLEXUS_DATA_DIR"]]
    return argv


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.agent_service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="agent config file")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config and token file, print the command, and exit",
    )
    options = parser.parse_args(args)
    try:
        config = read_config(options.config)
        token = read_token(Path(config["PLEXUS_JOIN_TOKEN_FILE"]))
    except AgentConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    argv = agent_argv(config, token)
    if options.check:
        shown = ["<token>" if a == token else a for a in argv]
        print("plexus " + " ".join(shown))
        return
    if config.get("SSL_CERT_FILE"):
        # httpx reads it when it builds its TLS context: the agent then trusts a private CA.
        os.environ["SSL_CERT_FILE"] = config["SSL_CERT_FILE"]
    from plexus.cli import app

    app(args=argv, prog_name="plexus")


if __name__ == "__main__":
    main()
