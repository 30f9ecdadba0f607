"""Log observers for ``twistd --logger``: the hub's log as JSON, one event per line.

twistd builds its log observer before the plugin reads the conf, so the
format is chosen on the command line, as for any twistd application::

    twistd -n --logger=msghub.logs.json_stdout msghub -c conf/msghub.toml

Each line is one ``twisted.logger`` event as JSON (``eventAsJSON``): the
format string, its fields (``log_namespace``, ``log_level``, ``log_time`` in
Unix seconds, and the named values such as ``ingress`` or ``path``), and for
failures the traceback as text.  ``eventFromJSON`` reads them back;
``twisted.logger.formatEvent`` renders the human line.
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, ILogObserver, eventAsJSON


def _line(event: dict) -> str:
    return eventAsJSON(event) + "\n"


def json_stdout() -> ILogObserver:
    """An observer writing one JSON object per line to standard output."""
    return FileLogObserver(sys.stdout, _line)


def json_stderr() -> ILogObserver:
    """The same, to standard error."""
    return FileLogObserver(sys.stderr, _line)
