"""``msghub-codec``: encode, decode and stats, in-process and as a real process."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from msghub.compact import Decoder, Encoder, Http11Reader, Request, to_http11
from msghub.compact.cli import main

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "conf" / "examples"
OPRA_HTTP = (EXAMPLES / "opra.http").read_bytes()
OPRA_COMPACT = (EXAMPLES / "opra.compact").read_bytes()

MIXED = (
    b"GET /a?x=1 HTTP/1.1\r\nHost: example.com\r\nAccept: text/html\r\nAccept: */*\r\n\r\n"
    b"POST /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    b"PUT /p HTTP/1.1\r\nHost: example.com\r\nCookie: a=1\r\nCookie: b=2\r\nContent-Length: 0\r\n\r\n"
    b"DELETE /d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
)


def run(argv: list[str], stdin: bytes, monkeypatch) -> tuple[int, bytes, str]:
    out, err = io.BytesIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.BytesIO(stdin))
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    code = main(argv)
    return code, out.getvalue(), err.getvalue()


def parse(data: bytes) -> list[Request]:
    reader = Http11Reader()
    out = reader.feed(data)
    reader.close()
    return out


def stats(text: str) -> dict[str, list[str]]:
    """Each stats line as label -> the numbers on it."""
    rows = {}
    for line in text.splitlines():
        if ":" in line:
            label, rest = line.split(":", 1)
        else:  # a table row: the label ends at the first run of spaces
            label, rest = (re.split(r"\s{2,}", line, maxsplit=1) + [""])[:2]
        rows[label.strip()] = re.findall(r"\d+(?:\.\d+)?|(?<!\S)-(?!\S)", rest)
    return rows


# -- encode / decode ------------------------------------------------------------------


@pytest.mark.parametrize("plain", [OPRA_HTTP, MIXED], ids=["opra", "mixed"])
def test_encode_then_decode_gives_the_same_requests(plain, monkeypatch):
    code, compact, err = run(["encode"], plain, monkeypatch)
    assert (code, err) == (0, "")
    code, back, err = run(["decode"], compact, monkeypatch)
    assert (code, err) == (0, "")
    assert parse(back) == parse(plain)
    assert [r.version for r in parse(back)] == [r.version for r in parse(plain)]


def test_decode_of_the_compact_example_is_the_plain_example_byte_for_byte(monkeypatch):
    assert run(["decode"], OPRA_COMPACT, monkeypatch) == (0, OPRA_HTTP, "")


def test_compact_example_is_what_encode_writes_today(monkeypatch):
    # Fails when the encoder changes: regenerate per conf/examples/README.md.
    assert run(["encode"], OPRA_HTTP, monkeypatch) == (0, OPRA_COMPACT, "")


def test_plain_example_is_100_opra_quotes_with_distinct_66_byte_bodies():
    reqs = parse(OPRA_HTTP)
    assert len(reqs) == 100
    assert {(r.method, r.target, r.headers) for r in reqs} == {
        (
            b"POST",
            b"/quotes/opra",
            ((b"Host", b"127.0.0.1"), (b"Content-Type", b"application/x-opra-quote"), (b"Accept-Encoding", b"identity")),
        )
    }
    assert {len(r.body) for r in reqs} == {66}
    assert len({r.body for r in reqs}) == 100
    assert b"".join(map(to_http11, reqs)) == OPRA_HTTP


# -- stats ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stream,kind", [(OPRA_COMPACT, "compact HTTP"), (OPRA_HTTP, "plain HTTP/1.1")], ids=["compact", "http"]
)
def test_stats_of_the_opra_example(stream, kind, monkeypatch):
    code, out, err = run(["stats"], stream, monkeypatch)
    assert (code, err) == (0, "")
    text = out.decode()
    assert f"input: {len(stream)} bytes of {kind} (detected)" in text
    rows = stats(text)
    assert rows["requests"] == ["100"]
    assert rows["body bytes"] == ["6600", "66.0"]
    compact = len(Encoder().encode(parse(OPRA_HTTP)))
    assert rows["bytes"] == [str(len(OPRA_HTTP)), str(compact)]
    assert rows["bytes per request"] == ["200.0", f"{compact / 100:.1f}"]
    assert rows["overhead per request"] == ["134.0", f"{(compact - 6600) / 100:.1f}"]
    plain_after, compact_after = map(float, rows["overhead after the first"])
    assert plain_after == 134.0
    # Steady state is '+: 66' CRLF; requests 2 and 3 cost more until the base moves (spec 9.2).
    assert 7.0 <= compact_after < 7.5
    assert rows["ratio HTTP/1.1 / compact"] == [
        f"{len(OPRA_HTTP) / compact:.2f}",
        f"{13400 / (compact - 6600):.2f}",
    ]


def test_stats_from_overrides_detection(monkeypatch):
    code, out, err = run(["stats", "--from", "http"], OPRA_COMPACT, monkeypatch)
    assert code == 1
    assert err.startswith("msghub-codec: stdin: 400 ")
    code, out, err = run(["stats", "--from", "compact"], OPRA_COMPACT, monkeypatch)
    assert (code, err) == (0, "")
    assert b"(--from)" in out


def test_stats_detects_plain_http_after_leading_blank_lines(monkeypatch):
    code, out, err = run(["stats"], b"\r\n" + MIXED, monkeypatch)
    assert (code, err) == (0, "")
    assert stats(out.decode())["requests"] == ["4"]
    assert b"plain HTTP/1.1 (detected)" in out


def test_stats_of_empty_input_reports_zero_requests(monkeypatch):
    code, out, err = run(["stats"], b"", monkeypatch)
    assert (code, err) == (0, "")
    assert stats(out.decode())["requests"] == ["0"]


def test_stats_of_one_request_shows_no_overhead_after_the_first(monkeypatch):
    code, out, err = run(["stats"], b"GET / HTTP/1.1\r\n\r\n", monkeypatch)
    assert code == 0
    rows = stats(out.decode())
    assert rows["bytes"] == ["18", "4"]
    assert rows["overhead after the first"] == ["-", "-"]


# -- errors -------------------------------------------------------------------------------


def test_bad_compact_line_is_one_stderr_line_naming_the_request(monkeypatch):
    code, out, err = run(["decode"], b"-:/1\r\n-:/2\r\nQ:junk\r\n", monkeypatch)
    assert code == 1
    assert err == "msghub-codec: stdin: 400 unknown opcode 'Q:' (after request 2)\n"
    assert parse(out) == [Request(b"GET", b"/1"), Request(b"GET", b"/2")]  # written before the error


def test_bad_plain_request_is_one_stderr_line_and_the_good_ones_are_encoded(monkeypatch):
    code, out, err = run(["encode"], b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nbad\r\n\r\n", monkeypatch)
    assert code == 1
    assert err == "msghub-codec: stdin: 400 Invalid header token (request 2)\n"
    assert Decoder().feed(out) == [Request(b"GET", b"/1")]


@pytest.mark.parametrize(
    "argv,stream",
    [(["decode"], b"-:/1\r\n+:/2 10\r\nabc"), (["encode"], b"GET / HTTP/1.1\r\nHost"), (["stats"], b"+:/ 3\r\na")],
)
def test_truncated_stream_is_exit_1(argv, stream, monkeypatch):
    code, out, err = run(argv, stream, monkeypatch)
    assert code == 1
    assert re.fullmatch(r"msghub-codec: stdin: 400 stream ended inside a request \(request \d\)\n", err)


def test_body_over_max_body_in_a_compact_stream_is_413(monkeypatch):
    code, out, err = run(["decode"], b"+:/big 99999999\r\n", monkeypatch)
    assert code == 1
    assert err == "msghub-codec: stdin: 413 body too large (request 1)\n"


def test_version_http11_cannot_carry_is_exit_1(monkeypatch):
    code, out, err = run(["decode"], b"-:/1\r\nV:HTTP/2.0\r\n-:/2\r\n", monkeypatch)
    assert code == 1
    assert err == "msghub-codec: stdin: request 2: HTTP/2.0 requests cannot be written as HTTP/1.1\n"


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["stats", "--from", "xml"], ["encode", "extra"]])
def test_usage_errors_exit_2(argv, monkeypatch):
    code, out, err = run(argv, b"", monkeypatch)
    assert code == 2
    assert "usage: msghub-codec" in err


def test_help_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.BytesIO())
    assert main(["--help"]) == 0
    assert "encode" in capsys.readouterr().out


# -- as a process ---------------------------------------------------------------------------


def codec(args: list[str], stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "msghub.compact.cli", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def test_readme_run_command_prints_stats():
    done = codec(["stats"], OPRA_COMPACT)
    assert done.returncode == 0, done.stderr
    assert b"requests: 100" in done.stdout


def test_process_round_trips_a_stream_much_larger_than_one_read():
    fields = parse(OPRA_HTTP)[0].headers
    reqs = [Request(b"POST", b"/quotes/opra", fields, b"%066d" % i) for i in range(5000)]
    plain = b"".join(map(to_http11, reqs))  # ~1 MB, 15 reads of 64 KiB
    encoded = codec(["encode"], plain)
    assert encoded.returncode == 0, encoded.stderr
    decoded = codec(["decode"], encoded.stdout)
    assert decoded.returncode == 0, decoded.stderr
    assert decoded.stdout == plain


def test_process_reports_bad_input_without_a_traceback():
    done = codec(["decode"], b"-:/1\r\n-:/2\r\nQ:junk\r\n")
    assert done.returncode == 1
    assert done.stderr == b"msghub-codec: stdin: 400 unknown opcode 'Q:' (after request 2)\n"
