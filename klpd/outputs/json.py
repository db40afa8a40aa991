"""The one JSON codec of klpd: the versioned ``klpd.status/1`` and ``klpd.inspect/1`` documents.

``encode`` turns the frozen model into plain JSON values field by field (enums as their string value), ``decode``
rebuilds the model from them, so ``klpctl status`` can render what the daemon sent exactly as it renders its own
computation. Schema changes that remove or rename a field bump the number after the slash.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from klpd.model import HostStatus, PatchModule
from klpd.model_description import PatchDescription

STATUS_SCHEMA = "klpd.status/1"
INSPECT_SCHEMA = "klpd.inspect/1"

T = TypeVar("T")


def encode(value: Any) -> Any:
    """A JSON-ready value (dicts, lists, str, int, bool, None) for a model object."""
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    return value


def decode(cls: type[T], data: Any) -> T:
    """Rebuild a model dataclass from :func:`encode` output; raises ValueError on a mismatch."""
    return typing.cast(T, _decode(cls, data))


@functools.cache
def _fields(cls: type) -> tuple[tuple[tuple[str, Any], ...], tuple[str, ...]]:
    """A dataclass's (field name, resolved type) pairs and its fields without a default, once per class:
    get_type_hints() evaluates string annotations, costly for each of thousands of symbols in a document."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    required = tuple(
        f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    return tuple((f.name, hints[f.name]) for f in fields), required


def _decode(hint: Any, data: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if data is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode(arg, data)
            except (ValueError, TypeError, KeyError) as exc:
                errors.append(str(exc))
        raise ValueError(f"{data!r} fits none of {hint}: {'; '.join(errors)}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(data, list):
            raise ValueError(f"expected a list, got {data!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in data)
        return tuple(_decode(a, v) for a, v in zip(args, data, strict=True))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(data)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(data, dict):
            raise ValueError(f"expected an object for {hint.__name__}, got {data!r}")
        fields, required = _fields(hint)
        kwargs = {name: _decode(field_hint, data[name]) for name, field_hint in fields if name in data}
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"{hint.__name__}: missing {', '.join(missing)}")
        return hint(**kwargs)
    if hint is bool:
        if not isinstance(data, bool):
            raise ValueError(f"expected a boolean, got {data!r}")
        return data
    if hint is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise ValueError(f"expected an integer, got {data!r}")
        return data
    if hint is str:
        if not isinstance(data, str):
            raise ValueError(f"expected a string, got {data!r}")
        return data
    return data


def status_document(
    status: HostStatus, source: str, extra: Mapping[str, Any] | None = None, identity: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``klpd.status/1`` document. ``source`` says who computed it: "direct", "check" or "daemon"; ``extra``
    is the daemon's own object, ``identity`` which host and boot it is (added to ``host``: the daemon's only)."""
    doc: dict[str, Any] = {"schema": STATUS_SCHEMA, "source": source}
    body = encode(status)
    doc["host"] = {
        k: body.pop(k)
        for k in ("kernel_release", "tainted", "livepatch_tainted", "livepatch_supported", "kallsyms_addresses_visible")
    }
    if identity:
        doc["host"].update(identity)
    doc.update(body)
    if extra:
        doc["daemon"] = dict(extra)
    return doc


def status_from_document(doc: Mapping[str, Any]) -> HostStatus:
    """The HostStatus inside a ``klpd.status/1`` document (as the daemon sends it)."""
    if doc.get("schema") != STATUS_SCHEMA:
        raise ValueError(f"unsupported schema {doc.get('schema')!r}, expected {STATUS_SCHEMA!r}")
    if not isinstance(doc.get("host"), dict) or not isinstance(doc.get("patches"), list):
        raise ValueError("a status document needs 'host' and 'patches'")
    flat = dict(doc["host"])
    flat["patches"] = doc["patches"]
    flat["problems"] = doc.get("problems", [])
    flat["candidates"] = doc.get("candidates", [])
    return decode(HostStatus, flat)


def inspect_document(modules: list[PatchModule], problems: list[Any]) -> dict[str, Any]:
    """The ``klpd.inspect/1`` document: every parsed file, and files that could not be parsed."""
    files = []
    for module in modules:
        body = encode(module)
        body["symbols"] = [encode(s) for _, s in sorted(module.symbols.items())]
        body["modinfo"] = [{"key": k, "value": v} for k, v in module.modinfo.entries]
        body["description"] = description_document(module.description)
        files.append(body)
    return {"schema": INSPECT_SCHEMA, "files": files, "problems": encode(problems)}


def description_document(desc: PatchDescription | None) -> dict[str, Any] | None:
    """A patch's own description in the inspect document: a fixed shape users' scripts rely on (README), not the
    model's field list (``where`` and ``new_func_set`` stay out: the first is prose, the second is new_func null)."""
    if desc is None:
        return None
    return {
        "found_by": desc.found_by.value,
        "replace": desc.replace,
        "states": [{"id": s.id, "version": s.version} for s in desc.states],
        "objects": [
            {
                "name": o.name,
                "functions": None if o.functions is None else [
                    {"old_name": f.old_name, "old_sympos": f.old_sympos, "new_func": f.new_func} for f in o.functions
                ],
                "callbacks": list(o.callbacks),
            }
            for o in desc.objects
        ],
    }


def dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"
