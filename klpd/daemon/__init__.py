"""The ``klpd`` daemon: event sources (uevents, the kernel log, inotify) → coalesced evaluations → one immutable
snapshot served over a Unix socket (JSON API), HTTP (/metrics) and an optional node_exporter textfile.

Data flow, one file each: ``uevents.py``, ``kernel_log.py``, ``inotify.py`` (event sources) → ``loop.py`` (the
single-threaded selector loop: coalescing, resyncs, the snapshot) with ``transitions.py`` (tasks blocking a
transition) → ``api.py`` (the servers) ; ``main.py`` is the command line, ``systemd_notify.py`` the sd_notify protocol.
"""
