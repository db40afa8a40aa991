"""Where each new snapshot goes besides the servers: node_exporter's textfile directory and systemd.

systemd hears READY=1 with the first snapshot (the unit is ``Type=notify``: klpd is up once it has an answer,
even a failed one) and STATUS= with every later one. The textfile is replaced atomically; a directory klpd cannot
write to is logged, shows as ``klpd_source_up{source="textfile"} 0`` (and in the daemon's source health) from
the next snapshot on, and the daemon goes on serving.
"""

from __future__ import annotations

import logging
from pathlib import Path

from klpd.daemon.snapshot import DaemonSnapshot
from klpd.daemon.systemd_notify import Notifier
from klpd.outputs.exposition import write_textfile

log = logging.getLogger(__name__)


class Announcer:
    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._ready_sent = False
        self._textfile_up: bool | None = None  # None: no textfile configured

    @property
    def up(self) -> dict[str, bool]:
        """Source health of the textfile as of the last write, for the next snapshot."""
        return {} if self._textfile_up is None else {"textfile": self._textfile_up}

    def announce(self, snapshot: DaemonSnapshot, textfile_dir: Path | None) -> None:
        self._textfile_up = None if textfile_dir is None else _write_textfile(textfile_dir, snapshot.metrics_text)
        log.debug("evaluation %d: %s", snapshot.stats.evaluations, snapshot.summary)
        if not self._ready_sent:
            self._ready_sent = True
            self._notifier.ready(snapshot.summary)
            log.info("ready: %s", snapshot.summary)
        else:
            self._notifier.status(snapshot.summary)


def _write_textfile(directory: Path, text: bytes) -> bool:
    try:
        write_textfile(directory, text)
    except OSError as exc:
        log.error("cannot write the node_exporter textfile in %s: %s", directory, exc.strerror or exc)
        return False
    return True
