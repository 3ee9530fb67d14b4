"""deploy/install-agent.sh in CI mode (--prefix --no-systemd) and the agent service launcher."""

from __future__ import annotations

import importlib.util
import json
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


def _run(
    *args: str, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def _planned_torch(arch: str) -> tuple[str, str]:
    """(index, requirement) that `install-agent.sh --dry-run --arch ARCH` says it would install;
    index "pip" means pip's configured indexes (PyPI)."""
    plan = _run("--dry-run", "--arch", arch, timeout=60)
    assert plan.returncode == 0, plan.stderr
    line = next(x for x in plan.stdout.splitlines() if "torch: index:" in x)
    index, requirement = line.split("torch: index:", 1)[1].rsplit(":", 1)
    return index, requirement


# pip evaluates environment markers (`platform_machine == "x86_64"`) for the machine it runs on,
# even with --platform; this makes it evaluate them for an aarch64 machine, as a Pi's pip would.
_PIP_AS_AARCH64 = (
    "import platform, runpy, sys; platform.machine = lambda: 'aarch64'; sys.argv[0] = 'pip'; "
    "runpy.run_module('pip', run_name='__main__', alter_sys=True)"
)


@pytest.mark.slow
def test_aarch64_torch_choice_pulls_no_cuda(tmp_path: Path) -> None:
    """What the script installs on a Pi resolves, for aarch64, without any CUDA package: torch
    2.11+ on PyPI requires cuda-toolkit 13, nvidia-cudnn-cu13 ... on every Linux (GBs on a Pi).
    Installs nothing (pip --dry-run --report), but pip 23.2 fetches the chosen torch wheel (about
    150 MB for 2.10.0) to read its metadata: about 20 s here."""
    index, requirement = _planned_torch("aarch64")
    reachable = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "pip"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if reachable.returncode != 0:
        last = (reachable.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"pip cannot reach its package index ({last[:160]})")
    report = tmp_path / "report.json"
    index_args = [] if index == "pip" else ["--index-url", index]
    resolved = subprocess.run(
        [sys.executable, "-c", _PIP_AS_AARCH64, "install", "--dry-run", "--quiet",
         "--ignore-installed", "--target", str(tmp_path / "target"),
         "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11",
         "--only-binary", ":all:", "--report", str(report), *index_args, requirement],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["environment"]["platform_machine"] == "aarch64"
    names = {x["metadata"]["name"].lower(): x["metadata"]["version"] for x in data["install"]}
    assert f"torch=={names.get('torch')}" == requirement, names
    gpu = sorted(n for n in names if n.startswith(("nvidia-", "cuda-", "triton")))
    assert not gpu, f"{requirement} pulls GPU packages on aarch64: {gpu}"


@pytest.mark.slow
@pytest.mark.extended  # a whole venv install (~13 s): make test-extended
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
    assert _planned_torch("x86_64") == ("https://download.pytorch.org/whl/cpu", "torch==2.13.0")
    arm32 = _run("--dry-run", "--arch", "armv7l", timeout=60)
    assert arm32.returncode != 0 and "64-bit Raspberry Pi OS" in arm32.stderr
    not_dry = _run("--arch", "aarch64", "--no-config", "--no-systemd", "--prefix", str(tmp_path))
    assert not_dry.returncode != 0 and "--arch only goes with --dry-run" in not_dry.stderr


def test_source_is_never_a_bare_name(tmp_path: Path) -> None:
    # "plexus" on PyPI is an unrelated project: a name must never reach an index.
    for name in ("plexus", "plexus-edge", "plexus-edge==0.1.0"):
        refused = _run("--dry-run", "--source", name, timeout=60, cwd=tmp_path)
        assert refused.returncode != 0 and "bare name" in refused.stderr, (name, refused.stderr)
    foreign = tmp_path / "plexus-0.0.4-py3-none-any.whl"
    foreign.write_bytes(b"")
    refused = _run("--dry-run", "--source", str(foreign), timeout=60)
    assert refused.returncode != 0 and "plexus_edge-*.whl" in refused.stderr
    git = _run("--dry-run", "--source", "git+https://example.org/plexus.git@v1", timeout=60)
    assert "plexus-edge[agent] @ git+https://example.org/plexus.git@v1" in git.stdout
    default = _run("--dry-run", timeout=60, cwd=tmp_path)  # the checkout the script is in
    assert f"plexus-edge[agent] @ {REPO.as_uri()}" in default.stdout


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
    # Device-local data (docs/your-model-and-data.md) reaches `plexus agent run --data`.
    config_file.write_text(config_file.read_text() + "PLEXUS_AGENT_DATA=/srv/samples\n")
    assert agent_argv(read_config(config_file))[-2:] == ["--data", "/srv/samples"]
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
