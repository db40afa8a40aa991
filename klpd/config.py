"""The daemon's configuration: a TOML file (``/etc/klpd/klpd.toml``) read with tomllib, then command-line overrides.

Every setting has a default, so an empty file (or none) is a valid configuration. Validation is strict because a
daemon that silently ignores a misspelt key runs with a configuration nobody wrote: unknown keys, wrong types,
malformed addresses and out-of-range numbers are :class:`~klpd.errors.ConfigError` naming the file, the key and the
problem. The shipped ``config/klpd.toml`` lists every setting with its default and a comment.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

from klpd.errors import ConfigError
from klpd.numbers import kernel_decimal
from klpd.protocol import DEFAULT_SOCKET
from klpd.regular_file import read_regular
from klpd.root import DEFAULT_PATCH_DIRS, SystemRoot

DEFAULT_CONFIG_PATH = Path("/etc/klpd/klpd.toml")
# Default metrics port, from the exporter block (9100-9999) of Prometheus' registry of default ports
# (https://github.com/prometheus/prometheus/wiki/Default-port-allocations). NOT YET REGISTERED there: that block
# was reported fully allocated in 2023, so this number may belong to another exporter; register a free port (new
# ones are handed out above 10000) before a release and change it here and in config/klpd.toml.
DEFAULT_PORT = 9816
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_SOCKET_MODE = 0o660
DEFAULT_RESYNC_INTERVAL = 300.0
DEFAULT_COALESCE_DELAY = 0.25
# Where a configuration given on the command line is said to come from in error messages.
COMMAND_LINE = "<command line>"
# The daemon's flag for each setting it can override (klpd [--listen HOST:PORT] [--socket PATH] [--textfile DIR]
# [--root DIR] [--log-level LEVEL]).
_FLAGS = {
    "listen": "--listen",
    "socket": "--socket",
    "textfile_dir": "--textfile",
    "root": "--root",
    "log_level": "--log-level",
}


class KernelLogSource(StrEnum):
    """Where ``livepatch:`` kernel messages are read from."""

    AUTO = "auto"  # the journal's kernel transport when journald runs, else /dev/kmsg
    JOURNAL = "journal"
    KMSG = "kmsg"
    NONE = "none"


class UeventSource(StrEnum):
    """Where module add/remove events come from (pyudev's monitor sources)."""

    AUTO = "auto"  # udev when udevd runs, else the kernel's own uevents
    UDEV = "udev"  # events re-broadcast by udevd once its rules ran
    KERNEL = "kernel"  # the kernel's NETLINK_KOBJECT_UEVENT multicast, with or without udevd
    NONE = "none"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str  # an IP literal or a host name; "" = every address
    port: int  # 0 = any free port (tests)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    """A validated configuration. ``source`` is the file it came from (None: built-in defaults)."""

    listen: ListenAddress | None = field(default_factory=lambda: parse_listen(DEFAULT_LISTEN))  # None: no HTTP
    socket: Path | None = Path(DEFAULT_SOCKET)  # None: no JSON API socket
    socket_mode: int = DEFAULT_SOCKET_MODE
    textfile_dir: Path | None = None  # None: no node_exporter textfile
    root: Path = Path("/")
    patch_dirs: tuple[str, ...] = DEFAULT_PATCH_DIRS
    staging_dirs: tuple[str, ...] = ()  # candidate patches: evaluated like installed ones, never loaded
    resync_interval: float = DEFAULT_RESYNC_INTERVAL  # seconds
    coalesce_delay: float = DEFAULT_COALESCE_DELAY  # seconds
    kernel_log: KernelLogSource = KernelLogSource.AUTO
    uevent_source: UeventSource = UeventSource.AUTO
    log_level: LogLevel = LogLevel.INFO
    source: Path | None = None

    def system_root(self) -> SystemRoot:
        return SystemRoot.at(self.root, self.patch_dirs, self.staging_dirs)

    def with_overrides(
        self,
        *,
        listen: str | None = None,
        socket: str | None = None,
        textfile_dir: str | None = None,
        root: str | None = None,
        log_level: str | None = None,
    ) -> Config:
        """This configuration with command-line flags applied (None = flag not given).

        The values are validated like the file's; a relative ``root`` is taken relative to the working directory
        (a file's must be absolute, since a daemon's working directory is ``/``). Errors name ``--<flag>``.
        """
        changes: dict[str, Any] = {}
        given = {"listen": listen, "socket": socket, "textfile_dir": textfile_dir, "log_level": log_level}
        for key, value in given.items():
            if value is not None:
                changes[key] = _SETTINGS[key](_Where(COMMAND_LINE, _FLAGS[key]), value)
        if root is not None:
            where = _Where(COMMAND_LINE, _FLAGS["root"])
            if not root:
                where.fail("must not be empty")
            changes["root"] = Path(root).absolute()
        return replace(self, **changes)


# --------------------------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True, slots=True)
class _Where:
    path: str
    key: str

    def fail(self, problem: str) -> NoReturn:
        raise ConfigError(self.path, self.key, problem)


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


def _type_name(value: object) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }
    return names.get(type(value), type(value).__name__)


def _string(where: _Where, value: object) -> str:
    if not isinstance(value, str):
        where.fail(f"must be a string, not {_type_name(value)}")
    return value


# The range of each duration, in seconds: what the daemon can honour. Timeouts of select() and threading are
# bounded (about 24.8 days as milliseconds in a C int: 2147484 s raised OverflowError in the loop); a resync more
# often than once a second would spend the daemon on re-reading what no event changed; a coalescing wait of a
# minute is already a minute of stale answers.
RESYNC_INTERVAL_RANGE = (1.0, 86400.0)
COALESCE_DELAY_RANGE = (0.0, 60.0)


def _seconds(where: _Where, value: object, *, bounds: tuple[float, float]) -> float:
    # bool is an int to Python; `interval = true` is a mistake, not 1 second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        where.fail(f"must be a number of seconds, not {_type_name(value)}")
    seconds = float(value)
    if not math.isfinite(seconds):
        where.fail(f"must be a finite number of seconds, not {value}")
    low, high = bounds
    if not low <= seconds <= high:
        where.fail(f"must be from {low:g} to {high:g} seconds, not {value}")
    return seconds


def parse_listen(text: str, where: _Where | None = None) -> ListenAddress:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (every address)."""
    where = where or _Where(COMMAND_LINE, "listen")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            where.fail(f"{text!r} is not [IPV6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            where.fail(f"{host!r} in {text!r} is not an IPv6 address")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            where.fail(f"{text!r} is not HOST:PORT (the port is missing)")
        if ":" in host:
            where.fail(f"{text!r}: write an IPv6 address in brackets, as [{host}]:{port_text}")
        if host and not _valid_host(host):
            where.fail(f"{host!r} in {text!r} is neither an IP address nor a host name")
    port = kernel_decimal(port_text)
    if port is None:
        where.fail(f"port {port_text!r} in {text!r} is not a number")
    if port > 65535:
        where.fail(f"port {port} in {text!r} is out of range (0-65535)")
    return ListenAddress(host, port)


def _valid_host(host: str) -> bool:
    # All digits and dots must be an IPv4 address: 999.1.1.1 is a typo, not a host name.
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return _HOSTNAME.fullmatch(host) is not None


def _listen(where: _Where, value: object) -> ListenAddress | None:
    text = _string(where, value)
    return None if text == "" else parse_listen(text, where)


def _absolute_path(where: _Where, value: object, *, optional: bool) -> Path | None:
    text = _string(where, value)
    if text == "" and optional:
        return None
    if not text.startswith("/"):
        where.fail(f"must be an absolute path, not {text!r}" + (' (or "" to turn it off)' if optional else ""))
    if "\0" in text:
        where.fail("must not contain a NUL character")
    return Path(text)


def _root(where: _Where, value: object) -> Path:
    path = _absolute_path(where, value, optional=False)
    if path is None:  # unreachable: optional=False never gives None
        where.fail("must not be empty")
    return path


def _socket_mode(where: _Where, value: object) -> int:
    # TOML has octal integers (0o660); a string "0660" is accepted too since that is how modes are usually written.
    if isinstance(value, str):
        if not re.fullmatch(r"0?[0-7]{3}|0o[0-7]{3}", value):
            where.fail(f'{value!r} is not an octal file mode such as "0660"')
        mode = int(value.removeprefix("0o"), 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        where.fail(f'must be an octal file mode (0o660 or "0660"), not {_type_name(value)}')
    if not 0 <= mode <= 0o777:
        where.fail(f"{mode:#o} is not a permission mode (0 to 0o777; no setuid, setgid or sticky bits)")
    if mode & 0o600 != 0o600:
        where.fail(f"{mode:#o} does not let the daemon's own user read and write the socket (needs 0o600)")
    return mode


def _patch_dirs(where: _Where, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        where.fail(f"must be an array of absolute paths, not {_type_name(value)}")
    dirs = []
    for i, item in enumerate(value):
        item_where = _Where(where.path, f"{where.key}[{i}]")
        text = str(_absolute_path(item_where, item, optional=False))
        if "{" in text.replace("{release}", "") or "}" in text.replace("{release}", ""):
            item_where.fail(f"{text!r}: the only placeholder is {{release}} (the running kernel release)")
        dirs.append(text)
    return tuple(dirs)


def _choice(enum: type[StrEnum]) -> Callable[[_Where, object], Any]:
    def parse(where: _Where, value: object) -> StrEnum:
        text = _string(where, value)
        try:
            return enum(text)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in enum)
            where.fail(f"{text!r} is not one of {choices}")

    return parse


_SETTINGS: Mapping[str, Callable[[_Where, object], Any]] = {
    "listen": _listen,
    "socket": lambda w, v: _absolute_path(w, v, optional=True),
    "socket_mode": _socket_mode,
    "textfile_dir": lambda w, v: _absolute_path(w, v, optional=True),
    "root": _root,
    "patch_dirs": _patch_dirs,
    "staging_dirs": _patch_dirs,
    "resync_interval": lambda w, v: _seconds(w, v, bounds=RESYNC_INTERVAL_RANGE),
    "coalesce_delay": lambda w, v: _seconds(w, v, bounds=COALESCE_DELAY_RANGE),
    "kernel_log": _choice(KernelLogSource),
    "uevent_source": _choice(UeventSource),
    "log_level": _choice(LogLevel),
}
SETTINGS: tuple[str, ...] = tuple(_SETTINGS)  # every key a configuration file may set


def parse_config(text: str, path: Path | str = COMMAND_LINE) -> Config:
    """Parse and validate the text of a configuration file; ``path`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, None, f"not valid TOML: {e}") from None
    return config_from_mapping(data, path)


def config_from_mapping(data: Mapping[str, object], path: Path | str) -> Config:
    values: dict[str, Any] = {}
    for key, value in data.items():
        setting = _SETTINGS.get(key)
        if setting is None:
            raise ConfigError(path, key, _unknown_key_problem(key, value))
        values[key] = setting(_Where(str(path), key), value)
    return Config(**values, source=Path(path) if path != COMMAND_LINE else None)


def _unknown_key_problem(key: str, value: object) -> str:
    if isinstance(value, dict):
        return "unknown table; every setting is a top-level key: " + ", ".join(SETTINGS)
    close = difflib.get_close_matches(key, SETTINGS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known settings: {', '.join(SETTINGS)})"
    return "unknown setting" + hint


# A configuration is a few hundred bytes; a file far larger is not one.
CONFIG_LIMIT = 1024 * 1024


def _is_dev_null(path: Path) -> bool:
    try:
        st, null = os.stat(path), os.stat(os.devnull)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev


def load_config(path: Path | str) -> Config:
    """Read and validate a configuration file. Every failure, unreadable file included, is a ConfigError."""
    try:
        # --config /dev/null says "every default"; a FIFO or /dev/zero as the config is an error, not a hang.
        raw = b"" if _is_dev_null(Path(path)) else read_regular(Path(path), CONFIG_LIMIT)
    except OSError as e:
        raise ConfigError(path, None, f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, f"not UTF-8 text (byte {e.start})") from None
    return parse_config(text, path)


def config_fields() -> Sequence[str]:
    """Names of the Config fields a file can set (the same as SETTINGS; kept for cross-checking tests)."""
    return tuple(f.name for f in fields(Config) if f.name != "source")
