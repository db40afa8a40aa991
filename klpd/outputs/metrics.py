"""Prometheus metrics: klpd's metric families over one evaluation, and their text (:func:`render`).

Nothing is computed on a scrape. The daemon renders the text of each evaluation once, with :func:`render`, into
the snapshot it publishes (:mod:`klpd.daemon.snapshot`); :mod:`klpd.outputs.exposition` serves those bytes on
/metrics (with the live process_* metrics) and writes them to node_exporter's textfile directory. What is
rendered is a :class:`MetricsSnapshot`: the :class:`~klpd.model.HostStatus` of the evaluation plus the daemon's
counters, read through the :class:`DaemonCounters` protocol (the daemon's ``DaemonStats`` has those fields, and
the outputs do not import the daemon).

Every metric klpd exports is declared once, in :data:`METRICS` (name, type, help, labels); the collector can only
emit declared metrics, and the tests check the alert rules and the Grafana dashboard against the same list.
Naming follows https://prometheus.io/docs/practices/naming/: the ``klpd_`` prefix, base units (seconds),
``_total`` on counters, and enumerations exported one-hot (one series per possible value, the current one 1), so
``klpd_patch_state{state="transition"} == 1`` works as a selector and a state nobody is in still reads 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from klpd import __version__
from klpd.model import VMLINUX, HostStatus, ModuleLoad, ObjectStatus, PatchStatus, SectionState, Severity, SymbolStatus
from klpd.model_description import FunctionStatus
from klpd.model_loader import CheckResult


class Kind(StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str  # the name as exposed and queried (a counter's ends in _total)
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


# The value vocabularies of the one-hot and per-value metrics. "unknown" is klpd's own value where the model has
# None: a loaded patch whose `enabled` could not be read, a symbol whose target .ko is missing.
PATCH_STATES: tuple[str, ...] = ("enabled", "disabled", "transition", "not_loaded", "unknown")
SYMBOL_STATUSES: tuple[str, ...] = (*(s.value for s in SymbolStatus), "unknown")
SECTION_STATES: tuple[str, ...] = tuple(s.value for s in SectionState)
FUNCTION_STATUSES: tuple[str, ...] = (*(s.value for s in FunctionStatus), "unknown")
MODULE_LOAD_VERDICTS: tuple[str, ...] = tuple(v.value for v in ModuleLoad)
SEVERITIES: tuple[str, ...] = tuple(s.value for s in Severity)

G, C = Kind.GAUGE, Kind.COUNTER
# fmt: off
BUILD_INFO = MetricDef("klpd_build_info", G, "klpd's version; always 1.", ("version",))
KERNEL_INFO = MetricDef("klpd_kernel_info", G, "The running kernel release; always 1.", ("release",))
LIVEPATCH_SUPPORTED = MetricDef(
    "klpd_livepatch_supported", G, "1 when the kernel has livepatch support (/sys/kernel/livepatch exists).")
KERNEL_TAINTED_LIVEPATCH = MetricDef(
    "klpd_kernel_tainted_livepatch", G,
    "1 when the kernel carries the livepatch taint (K); absent when /proc/sys/kernel/tainted is unreadable.")
KALLSYMS_ADDRESSES_VISIBLE = MetricDef(
    "klpd_kallsyms_addresses_visible", G,
    "1 when /proc/kallsyms shows real addresses to klpd rather than zeros (needs CAP_SYSLOG).")
HOST_PROBLEMS = MetricDef(
    "klpd_host_problems", G, "Host-level problems (unreadable sources, unparsable files) by severity.",
    ("severity",))
PATCH_INFO = MetricDef(
    "klpd_patch_info", G,
    "A patch klpd knows (installed or loaded; candidate=\"true\": in a staging directory): its file, srcversion "
    "and the kernel release it was built for; always 1.", ("patch", "path", "srcversion", "release", "candidate"))
PATCH_LOADED = MetricDef("klpd_patch_loaded", G, "1 when the patch module is loaded.", ("patch",))
PATCH_STATE = MetricDef(
    "klpd_patch_state", G,
    "The patch's livepatch state, one-hot: enabled, disabled, transition, not_loaded or unknown.",
    ("patch", "state"))
PATCH_WILL_LOAD = MetricDef(
    "klpd_patch_will_load", G,
    "1 when loading this patch file now would succeed (for a loaded patch: its checks pass). candidate=\"true\": "
    "a staging directory's patch, never loaded by klpd.", ("patch", "candidate"))
PATCH_PROBLEMS = MetricDef(
    "klpd_patch_problems", G, "Problems found in the patch, by severity.", ("patch", "severity", "candidate"))
PATCH_LOAD_CHECK = MetricDef(
    "klpd_patch_load_check", G,
    "A module loader check of insmod of the patch file that does not pass: result fails (the kernel refuses) or "
    "unknown (what it needs could not be read); always 1. A patch whose checks all pass has none.",
    ("patch", "check", "result", "candidate"))
PATCH_REPLACE = MetricDef(
    "klpd_patch_replace", G, "1 when the loaded patch uses atomic replace (sysfs replace, Linux 6.11+).",
    ("patch",))
PATCH_STACK_ORDER = MetricDef(
    "klpd_patch_stack_order", G, "1-based position of the loaded patch in the patch stack (Linux 6.14+).",
    ("patch",))
OBJECT_LOADED = MetricDef(
    "klpd_object_loaded", G, "1 when the object a patch patches (vmlinux or a module) is loaded.",
    ("patch", "object"))
OBJECT_PATCHED = MetricDef(
    "klpd_object_patched", G, "1 when the object is patched (sysfs patched, Linux 6.1+).", ("patch", "object"))
MODULE_LOAD = MetricDef(
    "klpd_module_load", G,
    "For a patched module that is not loaded: would loading it succeed with this patch loaded, one-hot (ok, "
    "refused, unknown).", ("patch", "object", "candidate", "verdict"))
SYMBOLS = MetricDef(
    "klpd_symbols", G, "Livepatch symbols of the patch's object, by how the kernel will resolve them; a status "
    "with no symbol has no series.", ("patch", "object", "status"))
SECTIONS = MetricDef(
    "klpd_sections", G,
    "Livepatch relocation sections (.klp.rela) of the patch's object, by state: applied, pending (module not "
    "loaded) or fails; a state with no section has no series.", ("patch", "object", "state"))
FUNCTIONS = MetricDef(
    "klpd_functions", G,
    "Functions the patch replaces in the object (its klp_func entries), by how the kernel will judge them: ok, "
    "not_found, ambiguous, sympos_not_found, not_traceable, invalid, unknown; a status with no function has no "
    "series.", ("patch", "object", "status"))
TRANSITION_START = MetricDef(
    "klpd_transition_start_time_seconds", G,
    "Unix time the patch's current transition started (as first seen by klpd).", ("patch",))
TRANSITION_BLOCKING_TASKS = MetricDef(
    "klpd_transition_blocking_tasks", G,
    "Tasks still blocking the patch's transition; absent when /proc/<pid>/task/<tid>/patch_state is unreadable.",
    ("patch",))
MODULE_LOAD_REFUSALS = MetricDef(
    "klpd_module_load_refusals_total", C,
    "Module loads the kernel refused because applying a patch's relocations failed, as seen in the kernel log.",
    ("patch", "object"))
SOURCE_UP = MetricDef(
    "klpd_source_up", G, "1 when the event or data source works (udev, kernel, journal, kmsg, inotify, ...).",
    ("source",))
EVENTS = MetricDef("klpd_events_total", C, "Events received, by source.", ("source",))
LOST_EVENTS = MetricDef(
    "klpd_lost_events_total", C, "Times a source lost events (ENOBUFS, POLLERR, overflow), by source; each "
    "one triggers a full resync.", ("source",))
EVALUATIONS = MetricDef("klpd_evaluations_total", C, "Evaluations of the host's livepatch status.")
EVALUATION_DURATION = MetricDef(
    "klpd_evaluation_duration_seconds", G, "Wall time the last evaluation took.")
LAST_EVALUATION = MetricDef(
    "klpd_last_evaluation_timestamp_seconds", G, "Unix time the last evaluation finished.")
# fmt: on

METRICS: tuple[MetricDef, ...] = (
    BUILD_INFO, KERNEL_INFO, LIVEPATCH_SUPPORTED, KERNEL_TAINTED_LIVEPATCH, KALLSYMS_ADDRESSES_VISIBLE,
    HOST_PROBLEMS, PATCH_INFO, PATCH_LOADED, PATCH_STATE, PATCH_WILL_LOAD, PATCH_PROBLEMS, PATCH_LOAD_CHECK,
    PATCH_REPLACE,
    PATCH_STACK_ORDER, OBJECT_LOADED, OBJECT_PATCHED, MODULE_LOAD, SYMBOLS, SECTIONS, FUNCTIONS, TRANSITION_START,
    TRANSITION_BLOCKING_TASKS, MODULE_LOAD_REFUSALS, SOURCE_UP, EVENTS, LOST_EVENTS, EVALUATIONS,
    EVALUATION_DURATION, LAST_EVALUATION,
)  # fmt: skip
METRIC_NAMES: frozenset[str] = frozenset(m.name for m in METRICS)


class DaemonCounters(Protocol):
    """What only the daemon knows, as of one snapshot (klpd.daemon.stats.DaemonStats). Counters count since the
    daemon started; read-only properties, so a frozen dataclass satisfies it."""

    @property
    def events(self) -> Mapping[str, int]: ...  # by source

    @property
    def lost_events(self) -> Mapping[str, int]: ...  # by source

    @property
    def evaluations(self) -> int: ...

    @property
    def evaluation_duration_seconds(self) -> float | None: ...  # of the evaluation that produced the snapshot

    @property
    def evaluation_timestamp_seconds(self) -> float | None: ...  # Unix time it finished

    @property
    def source_up(self) -> Mapping[str, bool]: ...  # by source

    @property
    def refusals(self) -> Mapping[tuple[str, str], int]: ...  # (patch, object)

    @property
    def transition_start(self) -> Mapping[str, float]: ...  # patch -> Unix time

    @property
    def transition_blocking_tasks(self) -> Mapping[str, int]: ...  # patch -> tasks not yet switched


@dataclass(frozen=True)
class MetricsSnapshot:
    status: HostStatus
    stats: DaemonCounters


# --------------------------------------------------------------------------------------------------------------
# Snapshot -> metric families (pure)


class _Families:
    """One metric family per declared metric, filled in declaration order."""

    def __init__(self) -> None:
        self._by_def: dict[MetricDef, Metric] = {m: _new_family(m) for m in METRICS}

    def add(self, metric: MetricDef, value: float, *labels: str) -> None:
        family = self._by_def[metric]
        # add_metric exists on both family classes; labels must match the declaration.
        assert len(labels) == len(metric.labels), metric.name
        family.add_metric(list(labels), value)  # type: ignore[attr-defined]

    def one_hot(self, metric: MetricDef, current: str, values: Iterable[str], *labels: str) -> None:
        for value in values:
            self.add(metric, 1.0 if value == current else 0.0, *labels, value)

    def families(self) -> list[Metric]:
        return list(self._by_def.values())


def _new_family(metric: MetricDef) -> Metric:
    labels = list(metric.labels)
    if metric.kind is Kind.COUNTER:
        return CounterMetricFamily(metric.name, metric.help, labels=labels)
    return GaugeMetricFamily(metric.name, metric.help, labels=labels)


def patch_state(patch: PatchStatus) -> str:
    """The one-hot state of a patch (PATCH_STATES)."""
    if not patch.loaded:
        return "not_loaded"
    if patch.transition:
        return "transition"
    if patch.enabled is None:
        return "unknown"
    return "enabled" if patch.enabled else "disabled"


def build_families(snapshot: MetricsSnapshot | None, version: str = __version__) -> list[Metric]:
    """Every klpd metric family for a snapshot (None: before the first evaluation, build info only)."""
    out = _Families()
    out.add(BUILD_INFO, 1, version)
    if snapshot is not None:
        _host(out, snapshot.status)
        patches = _unique(snapshot.status.patches)
        for patch in patches:
            _patch(out, patch, snapshot.stats)
        for candidate in _unique(snapshot.status.candidates):
            _candidate(out, candidate)
        # Deduplicated by label values: a duplicate series would make Prometheus reject the whole scrape.
        infos = [*(_patch_info_labels(p, "false") for p in snapshot.status.patches)]
        infos += [_patch_info_labels(p, "true") for p in snapshot.status.candidates]
        for labels in dict.fromkeys(infos):
            out.add(PATCH_INFO, 1, *labels)
        _daemon(out, snapshot.stats, patches)
    return out.families()


def _unique(patches: Iterable[PatchStatus]) -> list[PatchStatus]:
    # Two installed files with one module name (say in /var/lib/kpatch and /usr/lib/kpatch) would give two series
    # with the same labels, which Prometheus rejects. The first one, in patch directory order, stands for the name;
    # klpd_patch_info (labelled by path) still shows both files.
    seen: dict[str, PatchStatus] = {}
    for patch in patches:
        seen.setdefault(patch.name, patch)
    return list(seen.values())


def _host(out: _Families, status: HostStatus) -> None:
    out.add(KERNEL_INFO, 1, status.kernel_release)
    out.add(LIVEPATCH_SUPPORTED, float(status.livepatch_supported))
    if status.livepatch_tainted is not None:
        out.add(KERNEL_TAINTED_LIVEPATCH, float(status.livepatch_tainted))
    out.add(KALLSYMS_ADDRESSES_VISIBLE, float(status.kallsyms_addresses_visible))
    for severity in SEVERITIES:
        out.add(HOST_PROBLEMS, sum(p.severity == severity for p in status.problems), severity)


def _patch_info_labels(patch: PatchStatus, candidate: str) -> tuple[str, str, str, str, str]:
    release = patch.vermagic.split(" ", 1)[0] if patch.vermagic else ""
    return (patch.name, patch.path or "", patch.srcversion or "", release, candidate)


def _verdicts(out: _Families, patch: PatchStatus, candidate: str) -> None:
    """What insmod of the patch's file would do: the series a loaded or installed patch and a candidate share."""
    name = patch.name
    out.add(PATCH_WILL_LOAD, float(patch.will_load), name, candidate)
    for severity in SEVERITIES:
        out.add(PATCH_PROBLEMS, sum(p.severity == severity for p in patch.problems), name, severity, candidate)
    for check in patch.load_checks:
        if check.result is not CheckResult.OK:
            out.add(PATCH_LOAD_CHECK, 1.0, name, check.check.value, check.result.value, candidate)
    seen: set[str] = set()
    for obj in patch.objects:
        if obj.name not in seen and obj.module_load is not None:  # first wins, as for patches
            seen.add(obj.name)
            out.one_hot(MODULE_LOAD, obj.module_load.value, MODULE_LOAD_VERDICTS, name, obj.name, candidate)


def _candidate(out: _Families, patch: PatchStatus) -> None:
    """A staging directory's patch: only what loading it would do (it has no state, sysfs or refusals)."""
    _verdicts(out, patch, "true")


def _patch(out: _Families, patch: PatchStatus, stats: DaemonCounters) -> None:
    name = patch.name
    out.add(PATCH_LOADED, float(patch.loaded), name)
    state = patch_state(patch)
    out.one_hot(PATCH_STATE, state, PATCH_STATES, name)
    _verdicts(out, patch, "false")
    if patch.replace is not None:
        out.add(PATCH_REPLACE, float(patch.replace), name)
    if patch.stack_order is not None:
        out.add(PATCH_STACK_ORDER, patch.stack_order, name)
    if state == "transition":
        if name in stats.transition_start:
            out.add(TRANSITION_START, stats.transition_start[name], name)
        if name in stats.transition_blocking_tasks:
            out.add(TRANSITION_BLOCKING_TASKS, stats.transition_blocking_tasks[name], name)
    seen: set[str] = set()
    for obj in patch.objects:
        if obj.name not in seen:  # first wins, as for patches
            seen.add(obj.name)
            _object(out, name, obj)


def _object(out: _Families, patch: str, obj: ObjectStatus) -> None:
    out.add(OBJECT_LOADED, float(obj.loaded), patch, obj.name)
    if obj.patched is not None:
        out.add(OBJECT_PATCHED, float(obj.patched), patch, obj.name)
    # Counts by status, only the statuses that occur: a host's series stay bounded by what it has (README).
    symbols = Counter(s.status.value if s.status is not None else "unknown" for s in obj.symbols)
    for status in SYMBOL_STATUSES:
        if symbols[status]:
            out.add(SYMBOLS, symbols[status], patch, obj.name, status)
    sections = Counter(s.state.value for s in obj.sections)
    for state in SECTION_STATES:
        if sections[state]:
            out.add(SECTIONS, sections[state], patch, obj.name, state)
    functions = Counter(f.status.value if f.status is not None else "unknown" for f in obj.functions)
    for status in FUNCTION_STATUSES:
        if functions[status]:
            out.add(FUNCTIONS, functions[status], patch, obj.name, status)


def _daemon(out: _Families, stats: DaemonCounters, patches: Iterable[PatchStatus]) -> None:
    # A refusal counter that only appears at the first refusal hides that first increase from increase() and
    # rate(), so every (patch, module) that could be refused starts at 0.
    refusals: dict[tuple[str, str], int] = {
        (p.name, o.name): 0 for p in patches for o in p.objects if o.name != VMLINUX
    }
    refusals.update(stats.refusals)
    for (patch, obj), count in sorted(refusals.items()):
        out.add(MODULE_LOAD_REFUSALS, count, patch, obj)
    for source, up in sorted(stats.source_up.items()):
        out.add(SOURCE_UP, float(up), source)
    # Every source that exists gets an events series, even before its first event, for the same reason.
    # Only event sources count events; the data sources of an evaluation (kallsyms, ...) have source_up alone.
    for source in sorted(set(stats.events) | set(stats.lost_events)):
        out.add(EVENTS, stats.events.get(source, 0), source)
        out.add(LOST_EVENTS, stats.lost_events.get(source, 0), source)
    out.add(EVALUATIONS, stats.evaluations)
    if stats.evaluation_duration_seconds is not None:
        out.add(EVALUATION_DURATION, stats.evaluation_duration_seconds)
    if stats.evaluation_timestamp_seconds is not None:
        out.add(LAST_EVALUATION, stats.evaluation_timestamp_seconds)


# --------------------------------------------------------------------------------------------------------------
# The collector and the exposition


class KlpdCollector:
    """A prometheus-client collector over one snapshot (None: before the first evaluation).

    It builds the families on every collect(): the daemon calls it once per evaluation, through :func:`render`,
    and serves the text it got (klpd.outputs.exposition).
    """

    def __init__(self, snapshot: MetricsSnapshot | None, version: str = __version__) -> None:
        self._snapshot = snapshot
        self._version = version

    def collect(self) -> Iterator[Metric]:
        return iter(build_families(self._snapshot, self._version))

    def describe(self) -> Iterator[Metric]:
        # Lets a registry detect name clashes without building families from a snapshot.
        return iter(_new_family(m) for m in METRICS)


def build_registry(
    snapshot: MetricsSnapshot | None, *, version: str = __version__, process: bool = True
) -> CollectorRegistry:
    """A registry with klpd's collector over ``snapshot``, plus process_* metrics (memory, CPU) if asked."""
    registry = CollectorRegistry()
    registry.register(KlpdCollector(snapshot, version))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(snapshot: MetricsSnapshot | None, version: str = __version__) -> bytes:
    """The text exposition format (0.0.4) of one snapshot: what /metrics and the textfile contain of klpd."""
    return generate_latest(build_registry(snapshot, version=version, process=False))
