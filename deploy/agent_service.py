"""Run `plexus agent run` from an installed config file and a private join-token file.

`deploy/install-agent.sh` writes both and points systemd (or the `plexus-agent` wrapper in
`--no-systemd` installs) at `python -m deploy.agent_service --config FILE`. The token file goes
to the CLI as `--join-token-file`, so the token never appears on a command line (which every
user of the device can read in /proc) or in the environment; the CLI refuses a token file that
group or other may read.

The config file holds `KEY=VALUE` lines (`#` starts a comment):

    PLEXUS_ORCHESTRATOR=https://orchestrator.lan:8443   # required
    PLEXUS_JOIN_TOKEN_FILE=/etc/plexus-agent/join-token  # required, mode 0600 or 0400
    PLEXUS_NAME=pi-kitchen        PLEXUS_RELAY=0        PLEXUS_HOST=0.0.0.0
    PLEXUS_PORT=8701              PLEXUS_DATA_DIR=/var/lib/plexus-agent
    PLEXUS_CA_FILE=/etc/plexus-agent/ca.pem  # trust a private CA for an https orchestrator
    PLEXUS_AGENT_DATA=/srv/my-samples  # device-local data (`--data`): it never leaves the device

(`SSL_CERT_FILE=` is read as `PLEXUS_CA_FILE=`, as older installs wrote it.)
"""

from __future__ import annotations

import argparse
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
    "PLEXUS_AGENT_DATA",
    "PLEXUS_CA_FILE",
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
    """Read the join token, refusing a file that users other than its owner can read (the
    same check `plexus agent run --join-token-file` makes, run early by `--check`)."""
    from learner_agent.cli import read_token_file

    try:
        return read_token_file(path)
    except ValueError as exc:
        raise AgentConfigError(str(exc)) from None


def agent_argv(config: dict[str, str]) -> list[str]:
    """The `plexus` CLI arguments equivalent to the config (the token by its file)."""
    argv = [
        "agent",
        "run",
        "--orchestrator",
        config["PLEXUS_ORCHESTRATOR"],
        "--join-token-file",
        config["PLEXUS_JOIN_TOKEN_FILE"],
    ]
    ca_file = config.get("PLEXUS_CA_FILE") or config.get("SSL_CERT_FILE")
    if ca_file:
        argv += ["--ca-file", ca_file]
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
    if config.get("PLEXUS_AGENT_DATA"):
        argv += ["--data", config["PLEXUS_AGENT_DATA"]]
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
        read_token(Path(config["PLEXUS_JOIN_TOKEN_FILE"]))
    except AgentConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    argv = agent_argv(config)
    if options.check:
        print("plexus " + " ".join(argv))
        return
    from plexus.cli import app

    app(args=argv, prog_name="plexus")


if __name__ == "__main__":
    main()
