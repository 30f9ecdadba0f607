"""``msghub-passwd``: make the credential lines for a ``[users.NAME]`` table.

    $ msghub-passwd                 # asks for a password (or reads one line from stdin)
    password = "scrypt$16384$8$1$...$..."
    $ msghub-passwd --token         # makes a bearer token
    Hx3...                          # give this to the producer; it is not stored anywhere
    token_sha256 = "9f2c..."        # put this in [users.NAME]
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import secrets
import sys

from msghub.auth import hash_password


def _read_password() -> str | None:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("msghub-passwd: the passwords differ", file=sys.stderr)
            return None
    else:
        # Scripts pipe one line; only its line ending is stripped, since
        # spaces may be part of the password.
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("msghub-passwd: empty password", file=sys.stderr)
        return None
    return password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="msghub-passwd",
        description="Print the password (scrypt hash) or token_sha256 line for a [users.NAME] "
        "table of msghub.toml.",
    )
    parser.add_argument(
        "--token",
        action="store_true",
        help="generate a random bearer token; print it, then its token_sha256 line",
    )
    args = parser.parse_args(argv)
    if args.token:
        token = secrets.token_urlsafe(32)
        print(token)
        print(f'token_sha256 = "{hashlib.sha256(token.encode("ascii")).hexdigest()}"')
        return 0
    password = _read_password()
    if password is None:
        return 1
    print(f'password = "{hash_password(password)}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
