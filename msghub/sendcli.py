"""msghub-send: send messages to a hub from stdin or files, with progress and a summary.

    msghub-send compact://127.0.0.1:8081/held/demo < bodies.txt        # one body per line
    msghub-send --jsonl http://127.0.0.1:8080/ messages.jsonl           # {"path", "headers", "body"|"body_base64"}
    msghub-send --cacert ca.pem compacts://hub.example:8081/held/demo < bodies.txt

Exit status: 0 every message was acknowledged; 1 some were refused (the
summary counts them by status); 2 the hub could not be reached (or its TLS
certificate did not verify), or answers were missing (connection lost with
--no-resend, or it never answered).
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
import sys
import time
from collections import Counter
from typing import Any

from msghub.client import NO_ANSWER, Rejected, Unreachable, UntrustedCertificate, open_sender, parse_url
from msghub.compact.errors import UsageError

PROG = "msghub-send"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Send messages to msghub over compact HTTP or plain HTTP.",
        epilog="Exit status: 0 all acknowledged, 1 some refused, 2 hub unreachable or answers missing.",
    )
    p.add_argument("url", help="compact://HOST:PORT/PATH, compacts://..., http://HOST:PORT/PATH or https://...")
    p.add_argument("files", nargs="*", help="files to read (default: stdin; '-' is stdin)")
    p.add_argument("--jsonl", action="store_true",
                   help="each line is a JSON object: path (default: the URL's), headers, body or body_base64")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="a header field for every message (repeatable)")
    p.add_argument("-X", "--method", default="POST", help="request method (default POST)")
    p.add_argument("--token", help="bearer token")
    p.add_argument("--user", help="user name for Basic authentication")
    p.add_argument("--password", help="password for --user")
    p.add_argument("--cacert", metavar="FILE",
                   help="compacts:// and https://: verify the hub's certificate with the CA certificates "
                        "in FILE (PEM) instead of the system's")
    p.add_argument("--window", type=int, default=10_000, help="most unanswered requests (default 10000)")
    p.add_argument("--retry-for", type=float, default=10.0, metavar="SECONDS",
                   help="how long to keep trying to (re)connect (default 10)")
    p.add_argument("--no-resend", action="store_true",
                   help="after a lost connection, count unanswered messages as missing instead of resending")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar on stderr: auto = only when stderr is a terminal")
    p.add_argument("--quiet", "-q", action="store_true", help="no summary")
    return p


def _headers(values: list[str]) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, colon, rest = value.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"--header {value!r}: expected 'NAME: VALUE'")
        out.append((name.strip(), rest.strip()))
    return out


def _ssl_context(url: str, cacert: str) -> ssl.SSLContext:
    """A context trusting only the CAs in ``cacert`` (hostnames are checked, as by default)."""
    if not parse_url(url).tls:
        raise ValueError(f"--cacert {cacert}: the URL {url!r} is not compacts:// or https://")
    try:
        return ssl.create_default_context(cafile=cacert)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"--cacert {cacert}: no CA certificates read: {e}") from e


def _messages(args, default_path: str, headers):
    """Yield (path, body, headers) from --jsonl inputs."""
    streams = args.files or ["-"]
    for name in streams:
        stream = sys.stdin.buffer if name == "-" else open(name, "rb")
        try:
            for lineno, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    path = obj.get("path", default_path)
                    if "body_base64" in obj:
                        body = base64.b64decode(obj["body_base64"], validate=True)
                    else:
                        body = obj.get("body", "").encode("utf-8")
                    extra = obj.get("headers") or {}
                    items = headers + list(extra.items()) if headers else list(extra.items())
                except (ValueError, AttributeError, TypeError) as e:
                    raise ValueError(f"{name}:{lineno}: not a message object: {e}") from e
                yield path, body, items
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()


def _progress(mode: str):
    if mode == "never" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(unit="msg", unit_scale=True, file=sys.stderr, dynamic_ncols=True, mininterval=0.2, desc="sent")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    kwargs: dict[str, Any] = {}  # open_sender options
    try:
        headers = _headers(args.header)
        if args.cacert is not None:
            kwargs["ssl_context"] = _ssl_context(args.url, args.cacert)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    kwargs.update(window=args.window, give_up_after=args.retry_for, resend=not args.no_resend)
    if args.token:
        kwargs["token"] = args.token
    if args.user is not None:
        kwargs["username"] = args.user
        kwargs["password"] = args.password or ""
    refused: Counter[int] = Counter()
    start = time.perf_counter()
    sender = None
    status = 0
    bar = None
    try:
        sender, path = open_sender(args.url, **kwargs)
        bar = _progress(args.progress)
        send = sender.send
        method = args.method
        if args.jsonl:
            for path_, body, items in _messages(args, path, headers):
                send(path_, body, items, method)
                if bar is not None and not sender.sent & 1023:
                    bar.update(1024)
            if bar is not None:
                bar.update(sender.sent & 1023)
        else:  # the hot loop: one body per line
            items = headers or None
            for name in args.files or ["-"]:
                stream = sys.stdin.buffer if name == "-" else open(name, "rb", buffering=1 << 20)
                try:
                    while lines := stream.readlines(1 << 18):
                        for i, line in enumerate(lines):
                            if line[-1:] == b"\n":
                                lines[i] = line[:-2] if line[-2:-1] == b"\r" else line[:-1]
                        sender.send_many(path, lines, items, method)
                        if bar is not None:
                            bar.update(len(lines))
                finally:
                    if stream is not sys.stdin.buffer:
                        stream.close()
        try:
            sender.flush(timeout=max(args.retry_for, 1.0) * 3)
        except Rejected as e:
            refused.update(s for _, s, _ in e.failures)
    except UntrustedCertificate as e:
        hint = "" if args.cacert else " (--cacert FILE trusts the CA that signed it)"
        print(f"{PROG}: {e}{hint}", file=sys.stderr)
        status = 2
    except Unreachable as e:
        print(f"{PROG}: hub unreachable: {e}", file=sys.stderr)
        status = 2
    except TimeoutError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        status = 2
    except (ValueError, UsageError, OSError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        status = 2
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    if sender is not None:
        sender.close()
        missing = refused.pop(NO_ANSWER, 0)
        # Unreachable or a timeout leaves answers that no Rejected reported.
        missing = max(missing, sender.sent - sender.acked - sum(refused.values()))
        if missing:
            status = 2
        elif refused and status == 0:
            status = 1
        if not args.quiet:
            by_status = ", ".join(f"{s}: {n}" for s, n in sorted(refused.items()))
            per = sender.wire_bytes / sender.sent if sender.sent else 0.0
            rate = sender.sent / elapsed if elapsed > 0 else 0.0
            print(
                f"{PROG}: sent {sender.sent}, acknowledged {sender.acked}, "
                f"rejected {sum(refused.values())}" + (f" ({by_status})" if by_status else "")
                + f", missing {missing}, {per:.1f} wire bytes/message, {rate:,.0f} msg/s in {elapsed:.2f} s"
                + (f", {sender.reconnects} reconnect(s), {sender.resent} resent" if sender.reconnects else ""),
                file=sys.stderr,
            )
    return status


if __name__ == "__main__":
    sys.exit(main())
