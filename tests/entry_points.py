"""Where the installed ``klpd`` and ``klpctl`` commands are: beside the interpreter (the venv's ``pip install -e``),
or in ``$KLPD_BIN_DIR`` (``./dev.sh test-debian`` runs the suite on Debian's own Python packages and puts there the
two scripts a package installs in /usr/bin)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def entry_point(name: str) -> Path:
    folder = os.environ.get("KLPD_BIN_DIR")
    path = Path(folder) / name if folder else Path(sys.executable).with_name(name)
    assert path.exists(), f"{path} is missing: install the project (pip install -e .), or set KLPD_BIN_DIR"
    return path
