"""conf/systemd/msghub.service: systemd accepts it, and its commands run the hub that is installed."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest

from msghub.testing import REPO, twistd_command

UNIT = REPO / "conf" / "systemd" / "msghub.service"
TWISTD = "/opt/msghub/bin/twistd"
CONF = "/etc/msghub/msghub.toml"


def settings(name: str) -> list[str]:
    prefix = f"{name}="
    return [line[len(prefix):] for line in UNIT.read_text().splitlines() if line.startswith(prefix)]


def local_twistd() -> str:
    command = twistd_command()
    if len(command) != 1:
        pytest.skip("no twistd script to point the unit at")
    return command[0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_finds_no_problem_once_twistd_exists(tmp_path):
    unit = tmp_path / "msghub.service"
    unit.write_text(UNIT.read_text().replace(TWISTD, local_twistd()))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_the_unit_starts_twistd_in_the_foreground_and_checks_before_it_signals_a_reload(tmp_path):
    [start] = settings("ExecStart")
    check, signal = settings("ExecReload")
    assert shlex.split(start)[:4] == [TWISTD, "-n", "--pidfile=", "msghub"]
    assert shlex.split(check) == shlex.split(start) + ["--check"]
    assert signal == "/bin/kill -HUP $MAINPID"
    assert settings("Type") == ["simple"] and settings("Restart") == ["on-failure"]
    # The reload's check, pointed at this checkout and its shipped conf, passes.
    argv = [local_twistd() if a == TWISTD else str(REPO / "conf" / "msghub.toml") if a == CONF else a
            for a in shlex.split(check)]
    done = subprocess.run(argv, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"{REPO / 'conf' / 'msghub.toml'}: ok\n"), done.stderr


def test_the_unit_raises_the_descriptor_limit_above_both_ingress_ports_default_max_connections():
    from msghub.config import LimitsConfig

    [limit] = settings("LimitNOFILE")
    assert int(limit) > 2 * LimitsConfig().max_connections + 1000

