"""Print /sys/kernel/livepatch as JSON (run in the guest by guest.sh's sysfs_dump): the kernel's own view.

{"<patch>": {"enabled": "1", "transition": "0", ..., "objects": {"<object>": {"patched": "1",
 "functions": ["<function>,<sympos>", ...]}}}}  — attribute values as the kernel prints them, write-only ones absent.
"""

import json
import os
import sys

ROOT = "/sys/kernel/livepatch"


def attributes(path: str) -> dict[str, str]:
    values = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            try:
                with open(full) as f:
                    values[name] = f.read().strip()
            except OSError:  # force is write-only (0200)
                continue
    return values


def dump() -> dict[str, object]:
    patches: dict[str, object] = {}
    for patch in sorted(os.listdir(ROOT)) if os.path.isdir(ROOT) else ():
        pdir = os.path.join(ROOT, patch)
        objects = {}
        for obj in sorted(os.listdir(pdir)):
            odir = os.path.join(pdir, obj)
            if os.path.isdir(odir):
                funcs = sorted(f for f in os.listdir(odir) if os.path.isdir(os.path.join(odir, f)))
                objects[obj] = {**attributes(odir), "functions": funcs}
        patches[patch] = {**attributes(pdir), "objects": objects}
    return patches


if __name__ == "__main__":
    json.dump(dump(), sys.stdout, indent=1, sort_keys=True)
    sys.exit(0)
