"""deploy/install-agent.sh in CI mode (--prefix --no-systemd) and the agent service launcher."""

from __future__ import annotations

import importlib.util
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.agent_service import agent_argv, read_config, read_token
from deploy.errors import AgentConfigError

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "install-agent.sh"


def _torch_site() -> Path:
    spec = importlib.util.find_spec("torch")
    assert spec is not None and spec.origin is not None, "torch must be installed for this test"
    return Path(spec.origin).parents[1]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow
def test_prefix_install_without_systemd(tmp_path: Path) -> None:
    prefix = tmp_path / "agent"
    token = tmp_path / "token"
    token.write_text("join-secret-42\n")
    # CI must not download torch: reuse the one this interpreter has, and install plexus from
    # this checkout without touching an index for its dependencies.
    done = _run(
        "--prefix",
        str(prefix),
        "--no-systemd",
        "--orchestrator",
        "http://10.213.0.1:8700",
        "--join-token-file",
        str(token),
        "--name",
        "pi-ci",
        "--relay",
        "--source",
        str(REPO),
        "--torch-from",
        str(_torch_site()),
        "--pip-arg",
        "--no-deps",
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    python = prefix / "venv" / "bin" / "python"
    imported = subprocess.run(
        [str(python), "-c", "import learner_agent, torch, deploy; print(deploy.__file__)"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert imported.returncode == 0, imported.stderr
    assert str(prefix / "venv") in imported.stdout  # plexus itself lives in the new venv

    token_copy = prefix / "etc" / "join-token"
    assert token_copy.read_text() == "join-secret-42"
    assert stat.S_IMODE(token_copy.stat().st_mode) == 0o600
    config = read_config(prefix / "etc" / "agent.conf")
    assert config["PLEXUS_ORCHESTRATOR"] == "http://10.213.0.1:8700"
    assert config["PLEXUS_RELAY"] == "1" and config["PLEXUS_NAME"] == "pi-ci"

    unit = (prefix / "plexus-agent.service").read_text()
    assert "Restart=on-failure" in unit
    assert f"User={pwd.getpwuid(os.geteuid()).pw_name}\n" in unit  # --no-systemd: the caller
    assert f"--config {prefix / 'etc' / 'agent.conf'}" in unit
    assert "join-secret-42" not in unit

    check = subprocess.run(
        [str(prefix / "bin" / "plexus-agent"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr
    assert "--relay" in check.stdout and f"--join-token-file {token_copy}" in check.stdout
    assert "join-secret-42" not in check.stdout


def test_refusals_say_what_to_do(tmp_path: Path) -> None:
    missing = _run("--prefix", str(tmp_path), "--no-systemd", timeout=60)
    assert missing.returncode != 0 and "--orchestrator URL is required" in missing.stderr
    no_token = _run(
        "--prefix", str(tmp_path), "--no-systemd", "--orchestrator", "http://x:1", timeout=60
    )
    assert no_token.returncode != 0 and "join token" in no_token.stderr
    assert not (tmp_path / "venv").exists()  # refused before building anything
    plan = _run("--dry-run", "--torch-wheel", "/nonexistent/torch.whl", timeout=60)
    assert plan.returncode == 0 and "torch: wheel:/nonexistent/torch.whl" in plan.stdout
    if os.uname().machine == "x86_64":
        auto = _run("--dry-run", timeout=60)
        assert "download.pytorch.org/whl/cpu:torch==" in auto.stdout  # the CPU-only build


def test_launcher_keeps_the_token_private(tmp_path: Path) -> None:
    token = tmp_path / "join-token"
    token.write_text("s3cret")
    token.chmod(0o644)
    with pytest.raises(AgentConfigError, match="chmod 600"):
        read_token(token)
    token.chmod(0o600)
    assert read_token(token) == "s3cret"

    config_file = tmp_path / "agent.conf"
    config_file.write_text(
        f"PLEXUS_ORCHESTRATOR=https://o.lan:8443\nPLEXUS_JOIN_TOKEN_FILE={token}\n"
        "PLEXUS_PORT=8701  # rpc port\nPLEXUS_CA_FILE=/etc/plexus-agent/ca.pem\n"
    )
    argv = agent_argv(read_config(config_file))
    assert argv[:8] == [
        "agent",
        "run",
        "--orchestrator",
        "https://o.lan:8443",
        "--join-token-file",
        str(token),
        "--ca-file",
        "/etc/plexus-agent/ca.pem",
    ]
    assert argv[-2:] == ["--port", "8701"] and "s3cret" not in argv
    config_file.write_text("PLEXUS_ORCHESTRATR=https://o.lan\n")
    with pytest.raises(AgentConfigError, match="expected KEY=VALUE"):
        read_config(config_file)
    launched = subprocess.run(
        [sys.executable, "-m", "deploy.agent_service", "--config", str(tmp_path / "absent.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert launched.returncode == 2 and "cannot read agent config" in launched.stderr
