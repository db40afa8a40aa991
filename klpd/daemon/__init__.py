"""The ``klpd`` daemon: event sources (uevents, the kernel log, inotify) → coalesced evaluations → one immutable
snapshot served over a Unix socket (JSON API), HTTP (/metrics) and an optional node_exporter textfile.

Data flow, one file each: ``uevents.py``, ``kernel_log.py``, ``inotify.py`` (event sources, opened, dropped and
reopened by ``event_sources.py``) → ``loop.py`` (the single-threaded selector loop) with ``schedule.py`` (when the
next evaluation is due: coalescing, resyncs, retries, the watchdog; pure), ``stats.py`` (the daemon's counters),
``transitions.py`` (tasks blocking a transition) and ``evaluation.py`` (one evaluation and its failure policy) →
``snapshot.py`` (the immutable snapshot, every document rendered once) → ``servers.py`` and ``api.py`` (the
servers), ``announce.py`` (the textfile, sd_notify STATUS=); ``main.py`` is the command line,
``systemd_notify.py`` the sd_notify protocol.
"""
