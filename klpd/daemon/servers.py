"""The daemon's two servers as the configuration asks for them: the JSON API socket and the /metrics port.

Started before the first evaluation (so a bad address fails the start, with the flag that helps), closed at
exit, and restarted by a reload that changes their addresses; a reload whose new addresses cannot be bound goes
back to the previous ones rather than leave the daemon unreachable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from klpd.config import Config
from klpd.daemon.api import ApiServer, Documents, MetricsServer
from klpd.errors import KlpdError
from klpd.outputs.exposition import Exposition

log = logging.getLogger(__name__)


def addresses_changed(old: Config, new: Config) -> bool:
    return (new.socket, new.socket_mode, new.listen) != (old.socket, old.socket_mode, old.listen)


class Servers:
    """``documents`` returns the current snapshot (None before the first evaluation); ``exposition`` serves it;
    ``busy_for`` says how long the loop has been in its current turn."""

    def __init__(
        self,
        documents: Callable[[], Documents | None],
        exposition: Exposition,
        busy_for: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._documents = documents
        self._busy_for = busy_for
        self._exposition = exposition
        self.api: ApiServer | None = None
        self.metrics: MetricsServer | None = None

    def start(self, config: Config) -> None:
        """Bind the API socket and the metrics port (SetupError says what is wrong and which flag helps)."""
        if config.socket is not None:
            api = ApiServer(config.socket, config.socket_mode, self._documents, self._busy_for)
            api.start()
            self.api = api
        if config.listen is not None:
            server = MetricsServer(config.listen, self._exposition)
            try:
                server.start()
            except BaseException:
                self.close()
                raise
            self.metrics = server

    def close(self) -> None:
        for server in (self.api, self.metrics):
            if server is not None:
                server.close()
        self.api = self.metrics = None

    def restart(self, new: Config, old: Config) -> Config:
        """Move to ``new``'s addresses; returns the configuration in effect (``old``'s addresses if they failed)."""
        self.close()
        try:
            self.start(new)
        except KlpdError as exc:
            log.error("%s; going back to the previous addresses", exc)
            new = replace(new, socket=old.socket, socket_mode=old.socket_mode, listen=old.listen)
            try:
                self.start(new)
            except KlpdError as exc2:
                log.error("and those failed too: %s", exc2)
        return new
