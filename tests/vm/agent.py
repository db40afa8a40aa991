"""What the real-kernel cases of the agent share: shell functions that poll klpd in the guest, and the host's
reading of what they brought back."""

from __future__ import annotations

import json
import re

from prometheus_client.parser import text_string_to_metric_families

CONVERGE_SECONDS = 20
PORT = 9816


def poll_functions(socket: str) -> str:
    """Shell functions for a guest script (after guest.sh, so $KLPVM_OUT is there): klpd_get PATH asks the API on
    ``socket``; klpd_until and tasks are described below."""
    return (
        f"klpd_get() {{ curl -sf --max-time 5 --unix-socket {socket} \"http://klpd$1\"; }}\n\n"
        + _FUNCTIONS.replace("@CONVERGE@", str(CONVERGE_SECONDS)).replace("@PORT@", str(PORT))
    )


_FUNCTIONS = r"""
# klpd_until NAME JQ-FILTER: poll the daemon's status until the filter holds, @CONVERGE@ s at most; keep the
# last document as NAME.json, /metrics as NAME.prom, and when the wait started and ended as NAME.wait.
klpd_until() {
    local name=$1 filter=$2 start end
    start=$(date +%s.%N)
    end=$((SECONDS + @CONVERGE@))
    while :; do
        klpd_get /v1/status > "$KLPVM_OUT/$name.json" && jq -e "$filter" "$KLPVM_OUT/$name.json" > /dev/null && break
        ((SECONDS < end)) || break
        sleep 0.2
    done
    curl -sf --max-time 5 http://127.0.0.1:@PORT@/metrics > "$KLPVM_OUT/$name.prom"
    echo "$start $(date +%s.%N)" > "$KLPVM_OUT/$name.wait"
}

# tasks NAME: every task whose patch_state is not -1, as "pid tid state comm": the kernel's own view. Builtins
# only: a fork per task costs a second under TCG.
tasks() {
    local f t p s comm
    for f in /proc/[0-9]*/task/[0-9]*/patch_state; do
        read -r s < "$f" 2> /dev/null || continue
        [ "$s" = -1 ] && continue
        t=${f%/patch_state}
        p=${t#/proc/}
        read -r comm < "$t/comm" 2> /dev/null
        echo "${p%%/*} ${t##*/} $s $comm"
    done > "$KLPVM_OUT/$1.out"
}
"""


def jq_patch(name: str) -> str:
    return f'.patches[] | select(.name == "{name}")'


def jq_object(patch: str, obj: str) -> str:
    return f'{jq_patch(patch)} | .objects[] | select(.name == "{obj}")'


def jq_event(kind: str, subject: str, source: str = "kernel") -> str:
    return f'any(.daemon.events[]; .source == "{source}" and .kind == "{kind}" and .subject == "{subject}")'


class Snapshot:
    """What klpd_until brought back: the status document, the metrics, and how long the daemon took."""

    def __init__(self, result, name):
        self.name = name
        self.doc = _json(result, f"{name}.json")
        self.metrics = parse_metrics(result.text(f"{name}.prom"))
        start, end = map(float, result.text(f"{name}.wait").split())
        self.start, self.end = start, end
        self.seconds = end - start
        self.log = result.files.get("klpd.log", b"").decode(errors="replace")

    @property
    def daemon(self):
        return self.doc["daemon"]

    def patch(self, name):
        found = [p for p in self.doc["patches"] if p["name"] == name]
        assert len(found) == 1, f"{self.name}: klpd lists {[p['name'] for p in self.doc['patches']]}"
        return found[0]

    def obj(self, patch, name):
        found = [o for o in self.patch(patch)["objects"] if o["name"] == name]
        names = [o["name"] for o in self.patch(patch)["objects"]]
        assert len(found) == 1, f"{self.name}: patch {patch} objects {names}"
        return found[0]

    def metric(self, name, **labels):
        """The sample's value, or None when klpd does not export it."""
        return self.metrics.get((name, frozenset(labels.items())))

    def events(self, source=None):
        return [(e["source"], e["kind"], e["subject"]) for e in self.daemon["events"] if source in (None, e["source"])]

    def converged(self, condition, what):
        assert condition, (
            f"klpd did not show {what} within {CONVERGE_SECONDS} s ({self.name}, waited {self.seconds:.1f} s)\n"
            f"daemon: {self.daemon}\n--- klpd log (tail) ---\n{self.log[-4000:]}"
        )


def _json(result, name):
    text = result.files.get(name, b"").decode(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        log = result.files.get("klpd.log", b"").decode(errors="replace")
        raise AssertionError(f"{name} is not klpd's JSON: {text[:500]!r}\n--- klpd log ---\n{log[-4000:]}") from None


def parse_metrics(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def daemon_started(result):
    start, end = map(float, result.text("ready.wait").split())
    assert "klpd.log" in result.files
    log = result.text("klpd.log")
    assert re.search(r"klpd \S+ starting", log), log[-3000:]
    return end - start


