"""What the daemon and its clients agree on: where the JSON API listens and the paths it answers.

One definition for both ends (``klpd.daemon.api`` serves these paths, ``klpd.api_client`` asks for them), kept free
of imports so that ``klpctl`` can name the socket without loading the daemon's configuration code.

By hand: ``curl --unix-socket /run/klpd/klpd.sock http://klpd/v1/status``.
"""

from __future__ import annotations

# A str, not a Path: pathlib is not needed to ask the daemon a question. The systemd unit's RuntimeDirectory=klpd
# creates the directory.
DEFAULT_SOCKET = "/run/klpd/klpd.sock"

STATUS_PATH = "/v1/status"  # the klpd.status/1 document with the daemon's own "daemon" part
HEALTH_PATH = "/v1/health"  # is the daemon up, how fresh is its snapshot, which sources work
