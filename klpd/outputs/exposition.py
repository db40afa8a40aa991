"""How klpd's metrics reach Prometheus: /metrics over HTTP (:class:`Exposition` and :func:`serve_metrics`,
served by the daemon's ``MetricsServer``) and node_exporter's textfile collector (:func:`write_textfile`).

Both carry text :func:`klpd.outputs.metrics.render` produced once per evaluation; nothing here renders klpd's
metrics, so a scrape only copies bytes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

TEXTFILE_NAME = "klpd.prom"
# The format generate_latest() writes for klpd's names (all valid in the classic grammar). Spelt out because
# prometheus-client's CONTENT_TYPE_LATEST says version=1.0.0 in recent releases; older Prometheus servers expect 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Exposition:
    """/metrics for the daemon: klpd's text as rendered for the current snapshot, plus the live process_* metrics.

    prometheus-client formats every sample on every scrape, which for 50 patches (thousands of series) costs tens
    of milliseconds; the snapshot only changes on an evaluation, so the daemon renders its text then, once, and
    ``klpd_text`` only returns those bytes. The process_* metrics (a handful, read from /proc/self) stay live.
    """

    def __init__(self, klpd_text: Callable[[], bytes], *, process: bool = True) -> None:
        self._klpd_text = klpd_text
        self._process: CollectorRegistry | None = None
        if process:
            self._process = CollectorRegistry()
            ProcessCollector(registry=self._process)

    def scrape(self) -> bytes:
        text = self._klpd_text()
        return text + generate_latest(self._process) if self._process is not None else text


def serve_metrics(exposition: Exposition, method: str, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of a request for ``path``: /metrics (or /) by GET or HEAD, nothing else. The body
    is whole for HEAD too; the server sends only its length."""
    if path not in ("/metrics", "/"):
        return 404, [("Content-Type", "text/plain; charset=utf-8")], b"klpd serves /metrics\n"
    if method not in ("GET", "HEAD"):
        return 405, [("Allow", "GET, HEAD")], b""
    return 200, [("Content-Type", CONTENT_TYPE)], exposition.scrape()


def metrics_wsgi_app(exposition: Exposition) -> Callable[[dict[str, Any], Callable[..., Any]], list[bytes]]:
    """A WSGI application serving ``exposition`` at /metrics (for a WSGI server of one's own choosing)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        status, headers, body = serve_metrics(exposition, method, environ.get("PATH_INFO", "/"))
        if status == 200:
            headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [b"" if method == "HEAD" else body]

    return app


def write_textfile(directory: Path, data: bytes, name: str = TEXTFILE_NAME) -> Path:
    """Write ``data`` to ``directory/name`` atomically, for node_exporter's textfile collector.

    The data goes to a temporary file in the same directory (same file system, so the rename is atomic; named
    without the ``.prom`` suffix, so node_exporter never reads it half-written), which then replaces the target.
    OSError propagates: the caller decides whether a failed write is worth more than a log line.
    """
    target = directory / name
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp creates 0600; node_exporter usually runs as another user.
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target
