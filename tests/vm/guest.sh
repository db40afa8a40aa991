# Sourced by every VM case's script (bash, in the guest, cwd = the repository). $KLPVM_OUT comes back to the host.
#   step NAME CMD...   run CMD, keep its stdout, stderr and exit status as NAME.{out,err,rc} in $KLPVM_OUT, and mark
#                      the kernel log so the host can tell which messages CMD caused (GuestResult.step(NAME))
#   klp_wait           wait until no livepatch transition is in progress (fails after ~30 s)
#   sysfs_dump NAME    /sys/kernel/livepatch as JSON, into NAME.out (what klpd's sysfs view is compared with)
#   install_patch KO   copy KO where kpatch installs patches (/var/lib/kpatch/<release>/), print the new path: klpd
#                      knows a loaded patch's sections only from an installed file

step() {
    local name=$1
    shift
    echo "klpvm-step: $name" > /dev/kmsg
    "$@" > "$KLPVM_OUT/$name.out" 2> "$KLPVM_OUT/$name.err"
    local rc=$?
    echo "$rc" > "$KLPVM_OUT/$name.rc"
    return 0
}

klpctl() {
    "$KLPCTL" "$@"
}

klp_wait() {
    local i t
    for i in $(seq 150); do
        t=$(cat /sys/kernel/livepatch/*/transition 2> /dev/null)
        case "$t" in
            *1*) sleep 0.2 ;;
            *) return 0 ;;
        esac
    done
    echo "klp_wait: a livepatch transition is still running" >&2
    return 1
}

sysfs_dump() {
    step "$1" python3 tests/vm/sysfs_dump.py
}

install_patch() {
    local dir
    dir=/var/lib/kpatch/$(uname -r)
    mkdir -p "$dir" && cp "$1" "$dir/" && echo "$dir/${1##*/}"
}
