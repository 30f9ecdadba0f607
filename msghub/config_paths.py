"""Relative paths in the conf are relative to the conf file's folder, never to the working directory.

So ``twistd msghub -c /etc/msghub/msghub.toml``, ``msghub-spool -c run/x.toml``
from anywhere, and a SIGHUP reload after twistd's ``--rundir`` all find the
same files.  Paths are made absolute once, at load time; the objects built from
the conf only ever hold absolute paths.

Two kinds of values hold paths: ``spool.path``, and the Twisted endpoint
strings of ``[listen]``, whose grammar is ``type:field:field`` where a field is
``value`` or ``key=value`` and a backslash escapes the next character.  Only
the built-in types that name files are rewritten: ``unix:`` (its address) and
``ssl:`` (``privateKey``, ``certKey``, ``extraCertChain``, ``dhParameters``,
given by name or by position), also inside Twisted's ``haproxy:`` wrapper.
Other types, plugins' included, pass unchanged: their arguments are theirs to define.
"""

from __future__ import annotations

import os

# Endpoint type -> the path arguments of its parser (twisted.internet.endpoints
# _parseUNIX and _parseSSL), each with its position among the positional fields
# (0 is the type itself; ssl's 1 is the port, 4 to 6 sslmethod, interface, backlog).
_PATH_ARGUMENTS: dict[str, tuple[tuple[str, int], ...]] = {
    "unix": (("address", 1),),
    "ssl": (("privateKey", 2), ("certKey", 3), ("extraCertChain", 7), ("dhParameters", 8)),
}
# twisted.protocols.haproxy's endpoint: "haproxy:" then the endpoint it wraps.
_WRAPPER = "haproxy:"
# What _parseSSL reads when privateKey is not given: a file in the working
# directory, which is exactly what this module exists to avoid.
_SSL_DEFAULT_KEY = "server.pem"


def conf_folder(conf_path: str) -> str:
    """The absolute folder of ``conf_path``, taken from the working directory once."""
    # Not abspath: its normpath would turn "link/../x" into "x", which the
    # kernel resolves differently when "link" is a symbolic link.
    return os.path.dirname(os.path.join(os.getcwd(), conf_path))


def resolve_path(path: str, folder: str) -> str:
    """``path`` if absolute, else ``path`` under ``folder``."""
    return os.path.join(folder, path)


def _fields(description: str) -> list[list[str]] | None:
    """The fields of an endpoint string as Twisted splits them, unescaped; None if it ends in a lone backslash."""
    fields: list[list[str]] = [[""]]
    chars = iter(description)
    for c in chars:
        if c == ":":
            fields.append([""])
        elif c == "=" and len(fields[-1]) == 1:  # after the first "=", "=" is part of the value
            fields[-1].append("")
        elif c == "\\":
            escaped = next(chars, None)
            if escaped is None:
                return None
            fields[-1][-1] += escaped
        else:
            fields[-1][-1] += c
    return fields


def _escape(part: str) -> str:
    return part.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def resolve_endpoint(description: str, folder: str) -> str:
    """``description`` with the relative file paths of a ``unix:`` or ``ssl:`` endpoint put under ``folder``.

    A description with nothing to change is returned as written; one that
    does not parse is returned unchanged too, for the endpoint check to report.
    An ``ssl:`` endpoint without ``privateKey`` gets ``privateKey=FOLDER/server.pem``,
    the file Twisted would otherwise look for in the working directory.  A
    ``unix:`` address starting with ``@`` or NUL (Linux's abstract namespace) is no path.
    """
    head = description[: len(_WRAPPER)]
    # The PROXY protocol around another endpoint, written after it; any case, as plugin prefixes match.
    if head.lower() == _WRAPPER:
        return head + resolve_endpoint(description[len(_WRAPPER):], folder)
    fields = _fields(description)
    if fields is None or len(fields[0]) != 1 or fields[0][0] not in _PATH_ARGUMENTS:
        return description
    kind = fields[0][0]
    positional = [f for f in fields if len(f) == 1]
    changed = False
    for name, position in _PATH_ARGUMENTS[kind]:
        found = [(f, 1) for f in fields if len(f) == 2 and f[0] == name]
        if position < len(positional):
            found.append((positional[position], 0))
        if not found and kind == "ssl" and name == "privateKey":
            fields.append([name, resolve_path(_SSL_DEFAULT_KEY, folder)])
            changed = True
        for field, i in found:
            value = field[i]
            if value and not os.path.isabs(value) and not (kind == "unix" and value[0] in "@\0"):
                field[i] = resolve_path(value, folder)
                changed = True
    if not changed:
        return description
    return ":".join("=".join(_escape(part) for part in field) for field in fields)
