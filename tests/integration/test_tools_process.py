"""The installed commands as an operator runs them: twistd msghub --version, msghub-passwd NAME, msghub-spool."""

from __future__ import annotations

import hashlib
import http.client
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from twisted.copyright import version as twisted_version

from msghub import __version__
from msghub.auth import verify_password
from msghub.config import load
from msghub.message import Message
from msghub.spool import schema
from msghub.testing import REPO, HubProcess, twistd_command

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def tool(script: str, module: str) -> list[str]:
    """The console script beside this interpreter, else its module."""
    path = Path(sys.executable).with_name(script)
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


def run(argv: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=ENV, input=stdin, capture_output=True, text=True, timeout=60)


# --- twistd msghub --version ------------------------------------------------------------


def test_twistd_msghub_version_prints_msghub_twisted_and_python_versions_without_reading_a_conf(tmp_path):
    done = run(twistd_command() + ["msghub", "--version"], tmp_path)  # no conf/msghub.toml here
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"msghub {__version__} (Twisted {twisted_version}, Python {platform.python_version()})\n"


# --- msghub-passwd [NAME] ----------------------------------------------------------------

PASSWD = tool("msghub-passwd", "msghub.passwd")
ROUTE = '[[routes]]\nmatch = "/orders"\nusers = ["{name}"]\ndiscard = true\n'


def loads_as_the_user(tmp_path: Path, table: str, name: str):
    """The printed table, pasted into a conf whose route lists the user: the loaded user."""
    conf = tmp_path / "hub.toml"
    conf.write_text(table + ROUTE.format(name=name))
    return load(str(conf)).users[name]


def test_passwd_with_a_name_prints_the_whole_users_table_ready_to_paste(tmp_path):
    done = run(PASSWD + ["feed"], tmp_path, "s3cret pass\n")
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[0] == "[users.feed]"
    assert lines[1:3] == [
        "# An scrypt hash made by msghub-passwd; the producer sends",
        '# "Authorization: Basic base64(feed:PASSWORD)".',
    ]
    assert lines[3].startswith('password = "scrypt$')
    assert all(line.startswith("#") for line in lines[4:]) and 'users = ["feed"]' in lines[-1]
    user = loads_as_the_user(tmp_path, done.stdout, "feed")
    assert user.password is not None and verify_password("s3cret pass", user.password)


def test_passwd_token_with_a_name_prints_the_table_and_keeps_the_token_out_of_it(tmp_path):
    done = run(PASSWD + ["--token", "market feed"], tmp_path)
    assert done.returncode == 0
    token = done.stderr.splitlines()[-1]
    assert token not in done.stdout
    assert done.stdout.startswith('[users."market feed"]\n# The SHA-256, in 64 hex digits, of a bearer token')
    user = loads_as_the_user(tmp_path, done.stdout, "market feed")
    assert user.token_sha256 == hashlib.sha256(token.encode()).digest()


def test_passwd_without_a_name_still_prints_one_line(tmp_path):
    done = run(PASSWD, tmp_path, "secret\n")
    assert done.returncode == 0 and done.stdout.startswith('password = "scrypt$') and done.stdout.count("\n") == 1


@pytest.mark.parametrize("name", ["a:b", ""])
def test_passwd_refuses_a_name_the_conf_would_refuse(tmp_path, name):
    done = run(PASSWD + [name], tmp_path, "secret\n")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.endswith("msghub-passwd: error: NAME: a user name must be non-empty, printable and without ':'\n")


# --- msghub-spool -c from elsewhere, purge of an unknown name ---------------------------

SPOOL = tool("msghub-spool", "msghub.spoolcli")


@pytest.fixture
def conf_in_run(tmp_path) -> Path:
    """run/x.toml with a relative spool path, and a spool holding one message of "held"."""
    (tmp_path / "run").mkdir()
    conf = tmp_path / "run" / "x.toml"
    conf.write_text('[spool]\npath = "spool/x.db"\n[[routes]]\nmatch = "/held"\nspool = "held"\n')
    (tmp_path / "run" / "spool").mkdir()
    conn = schema.connect(str(tmp_path / "run" / "spool" / "x.db"), create=True)
    conn.execute("BEGIN IMMEDIATE")
    schema.ensure_schema(conn, "x.db")
    message = Message(1, b"POST", b"/held", (), b"kept", "held", None, {}, 1700000000.0)
    conn.execute(schema.INSERT_SEGMENT, ("held", 1, schema.segment_bytes([message]), schema.encode_segment([message])))
    conn.execute("COMMIT")
    conn.close()
    return conf


def test_spool_conf_given_relative_to_another_folder_finds_the_spool_beside_the_conf(tmp_path, conf_in_run):
    (tmp_path / "elsewhere").mkdir()
    done = run(SPOOL + ["-c", "../run/x.toml", "dump", "held", "--body"], tmp_path / "elsewhere")
    assert (done.returncode, done.stderr) == (0, "")
    assert "body: b'kept'" in done.stdout
    done = run(SPOOL + ["-c", "run/x.toml", "stats"], tmp_path)
    assert done.stdout.splitlines() == ["held   1  (1 segments)", "total  1"]
    assert not (tmp_path / "spool").exists() and not (tmp_path / "elsewhere" / "spool").exists()


def test_spool_purge_of_an_unknown_name_exits_1_with_one_line_naming_the_known_ones(tmp_path, conf_in_run):
    done = run(SPOOL + ["-c", "run/x.toml", "purge", "hold"], tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "msghub-spool: no spool name 'hold' in run/x.toml or the spool (did you mean 'held'? known: held)\n"
    done = run(SPOOL + ["-c", "run/x.toml", "purge", "held"], tmp_path)
    assert (done.returncode, done.stdout) == (0, "purged 1 messages from held\n")


# --- msghub-spool backup beside a hub that keeps committing ------------------------------


def spool_ids(db: Path, cwd: Path) -> list[str]:
    done = run(SPOOL + ["--db", str(db), "dump", "held"], cwd)
    assert done.returncode == 0, done.stderr
    return [line.split()[0] for line in done.stdout.splitlines() if not line.startswith(" ")]


def test_backup_beside_a_hub_under_load_holds_exactly_the_messages_of_one_commit(tmp_path):
    routes = '[[routes]]\nname = "held"\nmatch = "/held/{x}"\nspool = "held"\n'
    with HubProcess(tmp_path / "hub", routes) as hub:
        stop = threading.Event()
        sent: list[int] = []

        def produce() -> None:  # one connection, one request at a time: ids and commits in order
            conn = http.client.HTTPConnection("127.0.0.1", hub.http_port, timeout=10)
            deadline = time.monotonic() + 20
            while not stop.is_set() and len(sent) < 20_000 and time.monotonic() < deadline:
                conn.request("POST", "/held/a", body=b"x" * 100)
                response = conn.getresponse()
                response.read()
                assert response.status == 202
                sent.append(1)
            conn.close()

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            while len(sent) < 200 and producer.is_alive():
                time.sleep(0.05)
            done = run(SPOOL + ["-c", str(hub.conf_path), "backup", str(tmp_path / "copy.db")], tmp_path)
            assert done.returncode == 0, done.stderr
            before_stop = len(sent)
        finally:
            stop.set()
            producer.join(30)
    copied = spool_ids(tmp_path / "copy.db", tmp_path)
    final = spool_ids(Path(hub.spool_path), tmp_path)
    # Everything acknowledged before the backup began is in it; nothing acknowledged after it ended.
    assert 200 <= len(copied) <= before_stop <= len(final)
    assert final[: len(copied)] == copied  # a prefix: the spool as of one commit, nothing torn
