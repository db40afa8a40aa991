"""``klpd --once``: one evaluation, the human-readable status on stdout, klpctl's exit codes; with ``--textfile DIR``
(or ``textfile_dir``) also the metrics, written atomically to ``DIR/klpd.prom`` for node_exporter's textfile
collector — what systemd/klpd-textfile.timer runs on hosts that keep no daemon."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from klpd.collect import Evaluation, Evaluator
from klpd.config import Config
from klpd.daemon.stats import DaemonStats
from klpd.errors import ConfigError, SetupError
from klpd.outputs.exposition import write_textfile
from klpd.outputs.metrics import MetricsSnapshot, render
from klpd.outputs.text import render_status
from klpd.predict.verdicts import has_problems, undetermined

log = logging.getLogger(__name__)

# klpd's exit codes with --once (klpd.daemon.main.ExitCode; not imported: main imports this module).
OK, FAILURE, UNDETERMINED = 0, 1, 3


def run_once(config: Config) -> int:
    root = config.system_root()
    if not root.root.is_dir():
        raise ConfigError("<command line>", "--root", f"{root.root}: not a directory")
    evaluation = Evaluator(root).evaluate()
    status = evaluation.status
    if config.textfile_dir is not None:
        written = write_metrics(config.textfile_dir, evaluation)
        log.info("metrics written to %s", written)
    print(render_status(status, False), end="")
    if has_problems(status):
        return FAILURE
    return UNDETERMINED if undetermined(status) else OK


def write_metrics(directory: Path, evaluation: Evaluation) -> Path:
    """The metrics of one evaluation, as the daemon's /metrics has them after its first, in ``directory``;
    SetupError naming the directory and the flag when it cannot be written."""
    stats = DaemonStats(
        evaluations=1,
        evaluation_duration_seconds=evaluation.duration_seconds,
        evaluation_timestamp_seconds=time.time(),
        source_up={**evaluation.source_up, "textfile": True},
    )
    try:
        return write_textfile(directory, render(MetricsSnapshot(evaluation.status, stats)))
    except OSError as exc:
        raise SetupError(
            f"--textfile {directory}: cannot write the node_exporter textfile there: {exc.strerror or exc}"
        ) from exc
