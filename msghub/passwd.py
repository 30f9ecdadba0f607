"""``msghub-passwd``: make the credential lines for a ``[users.NAME]`` table.

    $ msghub-passwd                 # asks for a password (or reads one line from stdin)
    password = "scrypt$16384$8$1$...$..."
    $ msghub-passwd --token         # makes a bearer token
    Hx3...                          # give this to the producer; it is not stored anywhere
    token_sha256 = "9f2c..."        # put this in [users.NAME]
    $ msghub-passwd feed            # the whole [users.feed] table, commented, ready to paste
    $ msghub-passwd --token feed    # the same with token_sha256; the token itself goes to stderr
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import secrets
import sys

from msghub.auth import hash_password
from msghub.config import toml_key, user_name_problem


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


# After conf/msghub.toml's description of [users.NAME]: (comment above the
# key, line naming the other credential).
_COMMENTS = {
    "token_sha256": (
        '# The SHA-256, in 64 hex digits, of a bearer token; the producer sends\n# "Authorization: Bearer TOKEN".',
        "# For Basic as well, add the password line of `msghub-passwd`.",
    ),
    "password": (
        '# An scrypt hash made by msghub-passwd; the producer sends\n# "Authorization: Basic base64({name}:PASSWORD)".',
        "# For bearer tokens as well, add the token_sha256 line of `msghub-passwd --token`.",
    ),
}


def user_table(name: str, key: str, value: str) -> str:
    """A ``[users.NAME]`` table holding one credential ``key``, commented as in the shipped conf."""
    comment, other = _COMMENTS[key]
    return (
        f"[{toml_key('users', name)}]\n"
        f"{comment.format(name=name)}\n"
        f'{key} = "{value}"\n'
        f"{other}\n"
        f"# The routes this user may send to list it: users = [{json.dumps(name)}]\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="msghub-passwd",
        description="Print the password (scrypt hash) or token_sha256 line for a [users.NAME] "
        "table of msghub.toml, or with NAME the whole table.",
    )
    parser.add_argument(
        "--token",
        action="store_true",
        help="generate a random bearer token; print it, then its token_sha256 line",
    )
    parser.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help="print the whole [users.NAME] table, commented, instead of one line",
    )
    args = parser.parse_args(argv)
    if args.name is not None and (problem := user_name_problem(args.name)):
        parser.error(f"NAME: {problem}")
    if args.token:
        token = secrets.token_urlsafe(32)
        digest = hashlib.sha256(token.encode("ascii")).hexdigest()
        if args.name is None:
            print(token)
            print(f'token_sha256 = "{digest}"')
        else:
            # stdout is what gets pasted or appended to the conf; the token must not end up there.
            print(f"msghub-passwd: the token for {args.name} (give it to the producer; it is stored nowhere):",
                  file=sys.stderr)
            print(token, file=sys.stderr)
            print(user_table(args.name, "token_sha256", digest), end="")
        return 0
    password = _read_password()
    if password is None:
        return 1
    if args.name is None:
        print(f'password = "{hash_password(password)}"')
    else:
        print(user_table(args.name, "password", hash_password(password)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
