"""The daemon's configuration: the shipped file, and errors that name the file, the key and the problem."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from klpd.config import (
    DEFAULT_LISTEN,
    SETTINGS,
    Config,
    KernelLogSource,
    ListenAddress,
    LogLevel,
    UeventSource,
    config_fields,
    load_config,
    parse_config,
)
from klpd.errors import ConfigError
from klpd.root import DEFAULT_PATCH_DIRS

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "klpd.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "klpd.toml"
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    # Every message a user sees names the file first.
    assert str(err).startswith(str(path) + ": ")
    assert err.path == str(path)
    return err


# --- the shipped file ---------------------------------------------------------------------------------------


def test_shipped_file_loads_and_states_the_defaults():
    config = load_config(SHIPPED)
    # The shipped file documents the defaults: it must say exactly what an empty file means.
    assert config == Config(source=SHIPPED)
    assert config.listen == ListenAddress("127.0.0.1", 9816)
    assert str(config.listen) == DEFAULT_LISTEN
    assert config.socket == Path("/run/klpd/klpd.sock")
    assert config.socket_mode == 0o660
    assert config.textfile_dir is None
    assert config.patch_dirs == DEFAULT_PATCH_DIRS
    assert config.resync_interval == 300
    assert config.kernel_log is KernelLogSource.AUTO
    assert config.uevent_source is UeventSource.AUTO
    assert config.log_level is LogLevel.INFO


def test_shipped_file_sets_and_comments_every_setting():
    lines = SHIPPED.read_text().splitlines()
    keys = set(tomllib.loads(SHIPPED.read_text()))
    assert keys == set(SETTINGS) == set(config_fields())
    for key in SETTINGS:
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key} ="))
        assert lines[index - 1].startswith("#"), f"{key} has no comment right above it"


def test_empty_file_means_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config(source=tmp_path / "klpd.toml")


def test_system_root_uses_root_and_patch_dirs(tmp_path):
    config = parse_config(f'root = "{tmp_path}"\npatch_dirs = ["/opt/patches/{{release}}"]')
    root = config.system_root()
    assert root.patch_dirs_for("6.1.0") == (tmp_path / "opt/patches/6.1.0",)


# --- values that are accepted --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9816", ListenAddress("127.0.0.1", 9816)),
        ("[::1]:9816", ListenAddress("::1", 9816)),
        (":9816", ListenAddress("", 9816)),
        ("0.0.0.0:0", ListenAddress("0.0.0.0", 0)),
        ("metrics.example.org:9000", ListenAddress("metrics.example.org", 9000)),
    ],
)
def test_listen_forms(text, expected):
    assert parse_config(f'listen = "{text}"').listen == expected


def test_listen_and_socket_can_be_turned_off():
    config = parse_config('listen = ""\nsocket = ""')
    assert config.listen is None
    assert config.socket is None


@pytest.mark.parametrize(("value", "mode"), [("0o640", 0o640), ('"0600"', 0o600), ('"660"', 0o660)])
def test_socket_mode_forms(value, mode):
    assert parse_config(f"socket_mode = {value}").socket_mode == mode


def test_intervals_accept_integers_and_fractions():
    config = parse_config("resync_interval = 60\ncoalesce_delay = 0")
    assert config.resync_interval == 60.0
    assert config.coalesce_delay == 0.0
    assert parse_config("resync_interval = 1\ncoalesce_delay = 60").coalesce_delay == 60.0
    assert parse_config("resync_interval = 86400.0\ncoalesce_delay = 0.001").resync_interval == 86400.0


def test_the_longest_durations_are_ones_the_loop_can_wait():
    """select() takes its timeout as milliseconds in a C int; threading's waits stop at TIMEOUT_MAX."""
    import threading

    from klpd.config import COALESCE_DELAY_RANGE, RESYNC_INTERVAL_RANGE

    longest = max(RESYNC_INTERVAL_RANGE[1], COALESCE_DELAY_RANGE[1])
    assert longest * 1000 < 2**31 - 1 and longest < threading.TIMEOUT_MAX


def test_an_out_of_range_config_on_sighup_keeps_the_running_one(tmp_path):
    from klpd.daemon.loop import Agent
    from klpd.daemon.systemd_notify import Notifier

    path = tmp_path / "klpd.toml"
    path.write_text("resync_interval = 600\n")
    running = load_config(path)
    agent = Agent(replace(running, root=tmp_path, socket=None, listen=None), sources=[],
                  config_loader=lambda: load_config(path), notifier=Notifier(send=lambda s: None))  # fmt: skip
    try:
        for bad in ("resync_interval = 2147484\n", "resync_interval = 1e-300\n", "coalesce_delay = 1e9\n"):
            path.write_text(bad)
            assert agent.reload() is False
            assert agent.config.resync_interval == 600 and agent.config.coalesce_delay == 0.25
            assert agent.schedule.resync_interval == 600
    finally:
        agent.close()


# --- each kind of bad input names file and key ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('lisen = "127.0.0.1:1"', "lisen", "did you mean 'listen'"),
        ("[http]\nlisten = ':1'", "http", "unknown table"),
        ("listen = 9816", "listen", "must be a string, not an integer"),
        ('listen = "127.0.0.1"', "listen", "port is missing"),
        ('listen = "127.0.0.1:http"', "listen", "is not a number"),
        ('listen = "127.0.0.1:70000"', "listen", "out of range"),
        ('listen = "::1:9816"', "listen", "in brackets"),
        ('listen = "[::g]:9816"', "listen", "not an IPv6 address"),
        ('listen = "999.1.1.1:9816"', "listen", "neither an IP address nor a host name"),
        ('listen = "bad_host!:9816"', "listen", "neither an IP address nor a host name"),
        ('socket = "klpd.sock"', "socket", "absolute path"),
        ("socket_mode = 0o1777", "socket_mode", "not a permission mode"),
        ('socket_mode = "rw-rw----"', "socket_mode", "not an octal file mode"),
        ("socket_mode = 0o060", "socket_mode", "needs 0o600"),
        ("socket_mode = true", "socket_mode", "not a boolean"),
        ('textfile_dir = "var/lib/node"', "textfile_dir", "absolute path"),
        ('root = ""', "root", "absolute path"),
        ('patch_dirs = "/var/lib/kpatch"', "patch_dirs", "array of absolute paths, not a string"),
        ('patch_dirs = ["/ok", "relative/{release}"]', "patch_dirs[1]", "absolute path"),
        ('patch_dirs = ["/lib/modules/{kernel}"]', "patch_dirs[0]", "only placeholder is {release}"),
        ("patch_dirs = [1]", "patch_dirs[0]", "must be a string"),
        ("resync_interval = -5", "resync_interval", "must be from 1 to 86400 seconds, not -5"),
        ("resync_interval = 0", "resync_interval", "must be from 1 to 86400 seconds"),
        ("resync_interval = 1e-300", "resync_interval", "must be from 1 to 86400 seconds, not 1e-300"),
        # select() and threading take at most ~24.8 days: this one raised OverflowError in the loop
        ("resync_interval = 2147484", "resync_interval", "must be from 1 to 86400 seconds, not 2147484"),
        ("resync_interval = 1e308", "resync_interval", "must be from 1 to 86400 seconds"),
        ("coalesce_delay = 61", "coalesce_delay", "must be from 0 to 60 seconds, not 61"),
        ("resync_interval = inf", "resync_interval", "finite"),
        ('resync_interval = "5m"', "resync_interval", "number of seconds, not a string"),
        ("resync_interval = true", "resync_interval", "number of seconds, not a boolean"),
        ("coalesce_delay = -0.1", "coalesce_delay", "must be from 0 to 60 seconds"),
        ("coalesce_delay = nan", "coalesce_delay", "finite"),
        ('kernel_log = "dmesg"', "kernel_log", "not one of 'auto', 'journal', 'kmsg', 'none'"),
        ('uevent_source = "netlink"', "uevent_source", "not one of 'auto', 'udev', 'kernel', 'none'"),
        ('log_level = "verbose"', "log_level", "not one of"),
    ],
)
def test_bad_value_names_file_key_and_problem(tmp_path, text, key, words):
    err = error_for(tmp_path, text)
    assert err.key == key
    assert words in err.problem
    assert f": {key}: " in str(err)


def test_unknown_key_without_close_match_lists_known_settings(tmp_path):
    err = error_for(tmp_path, "colour = 1")
    assert err.key == "colour"
    for key in SETTINGS:
        assert key in err.problem


def test_toml_syntax_error_names_file_and_line(tmp_path):
    err = error_for(tmp_path, 'listen = "127.0.0.1:9816"\nresync_interval = = 3\n')
    assert err.key is None
    assert "not valid TOML" in err.problem
    assert re.search(r"line 2", err.problem)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "absent.toml")) + ": cannot read"):
        load_config(tmp_path / "absent.toml")


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "klpd.toml"
    path.write_bytes(b'listen = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


# --- command-line overrides ------------------------------------------------------------------------------------


def test_overrides_replace_file_values(tmp_path, monkeypatch):
    base = parse_config('listen = "127.0.0.1:1"\nresync_interval = 60')
    monkeypatch.chdir(tmp_path)
    config = base.with_overrides(listen="[::]:2", socket="/tmp/k.sock", textfile_dir="/tmp/tf", root="fixture")
    assert config.listen == ListenAddress("::", 2)
    assert config.socket == Path("/tmp/k.sock")
    assert config.textfile_dir == Path("/tmp/tf")
    assert config.root == tmp_path / "fixture"
    assert config.resync_interval == 60  # not overridden
    assert base.listen == ListenAddress("127.0.0.1", 1)  # the original is unchanged (frozen)


def test_overrides_not_given_change_nothing():
    base = parse_config('log_level = "debug"')
    assert base.with_overrides() == base


@pytest.mark.parametrize(
    ("flag", "value", "key"),
    [("listen", "localhost", "--listen"), ("textfile_dir", "relative", "--textfile"), ("root", "", "--root")],
)
def test_bad_override_names_the_flag(flag, value, key):
    with pytest.raises(ConfigError) as info:
        Config().with_overrides(**{flag: value})
    assert info.value.key == key
    assert str(info.value).startswith(f"<command line>: {key}: ")


def test_dev_null_is_an_empty_configuration_and_dev_zero_an_error(tmp_path):
    """--config /dev/null is how one says "every default"; another device (or a FIFO) is no configuration file."""
    assert dataclasses.replace(load_config("/dev/null"), source=None) == dataclasses.replace(
        load_config(_empty(tmp_path)), source=None
    )
    zero = tmp_path / "zero.toml"
    zero.symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(zero)


def _empty(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("")
    return path
