"""deploy/install.sh into a temporary root (--destdir: no root, no user, no systemctl) and the
systemd unit checked with `systemd-analyze verify` where that tool exists."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "install.sh"
UNIT = REPO / "deploy" / "systemd" / "edged.service"
ANALYZE = shutil.which("systemd-analyze")


def run_install(*args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGED_", "DESTDIR", "VIRTUAL_ENV"))}
    # A base interpreter for the venv, not the test runner's own venv.
    env["PYTHON"] = getattr(sys, "_base_executable", None) or sys.executable
    proc = subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, f"install.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def unit_options(text: str) -> dict[str, dict[str, list[str]]]:
    """section → key → values (systemd keys repeat; an empty assignment resets)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def verify(unit_text: str, tmp: Path, dropin: str | None = None, exec_path: str | None = None) -> None:
    """`systemd-analyze verify` with no warnings; ExecStart pointed at an executable that exists."""
    if ANALYZE is None:
        pytest.skip("systemd-analyze is not installed")
    d = tmp / "verify"
    d.mkdir(exist_ok=True)
    target = exec_path or shutil.which("true")
    (d / "edged.service").write_text(unit_text.replace("/opt/edged/venv/bin/edged", target))
    if dropin is not None:
        (d / "edged.service.d").mkdir(exist_ok=True)
        (d / "edged.service.d" / "10-credentials.conf").write_text(dropin)
    proc = subprocess.run([ANALYZE, "verify", "--man=no", str(d / "edged.service")], capture_output=True, text=True,
                          timeout=60)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, output
    bad = [ln for ln in output.splitlines() if re.search(r"Unknown|ignoring|Invalid|not executable|deprecated", ln, re.I)]
    assert not bad, output


# --------------------------------------------------------------------------- the unit (fast)


def test_unit_is_a_hardened_notify_service():
    u = unit_options(UNIT.read_text())
    svc, unit = u["Service"], u["Unit"]
    assert svc["Type"] == ["notify"] and svc["NotifyAccess"] == ["main"]
    assert int(svc["WatchdogSec"][0]) >= 30  # the daemon stops pinging after a 30 s lane stall
    assert svc["Restart"] == ["on-failure"]
    assert int(unit["StartLimitBurst"][0]) >= 3 and int(unit["StartLimitIntervalSec"][0]) >= 60
    assert svc["RestartPreventExitStatus"] == ["2"]  # bad config: restarting cannot help
    assert svc["User"] == ["edged"] and svc["Group"] == ["edged"]
    assert svc["ExecStart"] == ["/opt/edged/venv/bin/edged run --config /etc/edged/edged.toml"]
    for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                      ("PrivateTmp", "yes"), ("CapabilityBoundingSet", ""),
                      ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6")):
        assert svc[key] == [want], key
    assert svc["ReadWritePaths"] == ["/var/lib/edged"]  # the state directory, and nothing else
    assert svc["StateDirectory"] == ["edged"]
    assert re.fullmatch(r"\d+[KMG]?", svc["MemoryMax"][0])
    assert svc["EnvironmentFile"] == ["-/etc/edged/edged.env"]
    assert u["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit["Wants"][0]
    # The credential names edged reads from $CREDENTIALS_DIRECTORY are documented in the unit.
    text = UNIT.read_text()
    for name in ("mqtt_password", "cloud_api_key", "request_secret"):
        assert name in text


def test_unit_passes_systemd_analyze_verify(tmp_path):
    verify(UNIT.read_text(), tmp_path,
           dropin="[Service]\nLoadCredential=mqtt_password:/etc/edged/credentials/mqtt_password\n")


def test_install_script_usage_errors():
    assert subprocess.run(["sh", "-n", str(SCRIPT)]).returncode == 0
    ok = subprocess.run(["sh", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--destdir" in ok.stdout and "--uninstall" in ok.stdout
    for args in (["--bogus"], ["--purge"], ["--prefix"], ["--prefix", "relative/path", "--destdir", "/tmp/x"]):
        proc = subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True)
        assert proc.returncode != 0, args
        assert "error" in proc.stderr


# --------------------------------------------------------------------------- install, upgrade, uninstall


@pytest.mark.timeout(900)
def test_install_rerun_uninstall_purge(tmp_path):
    root = tmp_path / "root"
    venv_edged = root / "opt/edged/venv/bin/edged"
    config = root / "etc/edged/edged.toml"
    state = root / "var/lib/edged"
    unit = root / "etc/systemd/system/edged.service"
    creds = root / "etc/edged/credentials"
    dropin = root / "etc/systemd/system/edged.service.d/10-credentials.conf"

    first = run_install("--destdir", str(root))
    out = first.stdout + first.stderr
    # the venv works
    version = subprocess.run([str(venv_edged), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and re.fullmatch(r"edged \d+\.\d+\.\d+\S*", version.stdout.strip())
    # config from `edged config init`, private to root and the service group
    assert config.is_file() and "[mqtt]" in config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    check = subprocess.run([str(venv_edged), "config", "validate", "--config", str(config)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    assert state.is_dir() and stat.S_IMODE(state.stat().st_mode) == 0o750
    # the unit, as shipped
    assert unit.read_text() == UNIT.read_text()
    assert not dropin.exists()  # no secrets yet
    assert (root / "opt/edged/share/doc/DEPLOY.md").is_file()  # the unit's Documentation=
    # nothing was done to the system
    assert "would create the system user edged" in out
    assert "would run: systemctl daemon-reload" in out and "would run: systemctl enable edged.service" in out

    # Re-run (an upgrade): the edited config and the state are kept, a secret gets a drop-in.
    config.write_text(config.read_text() + "\n# edited by the operator\n")
    (state / "state.npz").write_bytes(b"keep me")
    (creds / "mqtt_password").write_text("s3cret\n")
    # --with-llm is guarded: where this edged has no `models pull` yet, a warning and no failure.
    # (Where it has one, pulling would download a model: not in this test.)
    has_pull = subprocess.run([str(venv_edged), "models", "pull", "--help"], capture_output=True,
                              timeout=60).returncode == 0
    second = run_install("--destdir", str(root), *([] if has_pull else ["--with-llm"]))
    assert "kept" in second.stdout
    if not has_pull:
        assert "no 'models pull' command" in second.stderr
    assert config.read_text().endswith("# edited by the operator\n")
    assert (state / "state.npz").read_bytes() == b"keep me"
    assert subprocess.run([str(venv_edged), "--version"], capture_output=True, timeout=60).returncode == 0
    assert stat.S_IMODE((creds / "mqtt_password").stat().st_mode) == 0o600
    text = dropin.read_text()
    assert "LoadCredential=mqtt_password:/etc/edged/credentials/mqtt_password" in text
    assert "cloud_api_key" not in text
    if ANALYZE is not None:  # the installed unit + drop-in, with the staged executable
        verify(unit.read_text(), tmp_path, dropin=text, exec_path=str(venv_edged))

    # Uninstall: the service and the venv go, config and state stay.
    gone = run_install("--destdir", str(root), "--uninstall")
    assert not unit.exists() and not dropin.parent.exists()
    assert not (root / "opt/edged").exists()
    assert config.read_text().endswith("# edited by the operator\n")
    assert (state / "state.npz").exists() and (creds / "mqtt_password").exists()
    assert "would run: systemctl disable --now edged.service" in gone.stdout

    # Purge: config and state too.
    purge = run_install("--destdir", str(root), "--uninstall", "--purge")
    assert not (root / "etc/edged").exists() and not state.exists()
    assert "would remove the system user edged" in purge.stdout
    assert root.is_dir()  # the staging root itself is never removed
