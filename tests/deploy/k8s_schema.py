"""Offline validation of rendered Kubernetes objects: each object is walked against the
official `kubernetes` client's typed models (their `openapi_types` and `attribute_map`),
every unknown field is an error (what `kubectl apply --validate=strict` would refuse), and
the object is then deserialised into the model (which checks required fields).

The three custom resources Berth ships have no typed model in the client; they are checked
against the fields of their published CRDs that Berth uses, unknown ones refused likewise.
"""

from __future__ import annotations

import re
from typing import Any

from kubernetes import client
from kubernetes.client import models

# The client's type strings: `List[V1Container]`, `Dict[str, str]` (older clients:
# `list[...]`, `dict(str, ...)`).
_LIST = re.compile(r"[Ll]ist\[(.+)\]")
_DICT = re.compile(r"(?:Dict\[str, (.+)\]|dict\(str, (.+)\))")
PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (object,),
    "datetime": (str,),
    "date": (str,),
    "bytes": (str,),
}
# apiVersion -> the client's model prefix (every group Berth uses is at v1).
VERSIONS = {
    "v1",
    "apps/v1",
    "policy/v1",
    "networking.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
    "storage.k8s.io/v1",
}
# Custom resources: allowed fields, nested. `...` marks a free-form value.
_ENDPOINT = {"port": str, "path": str, "interval": str, "scheme": str, "scrapeTimeout": str}
_RULE = {"alert": str, "record": str, "expr": str, "for": str, "labels": ..., "annotations": ...}
CRDS: dict[tuple[str, str], dict[str, Any]] = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"): {"driver": str, "deletionPolicy": str, "parameters": ...},
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "spec": {"selector": ..., "endpoints": [_ENDPOINT], "namespaceSelector": ..., "jobLabel": str}
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "spec": {"groups": [{"name": str, "interval": str, "rules": [_RULE]}]}
    },
}


def problems(obj: dict[str, Any]) -> list[str]:
    """What is wrong with one rendered object (empty: valid)."""
    api_version, kind = str(obj.get("apiVersion")), str(obj.get("kind"))
    where = f"{kind}/{(obj.get('metadata') or {}).get('name')}"
    if (api_version, kind) in CRDS:
        found: list[str] = []
        meta = obj.get("metadata")
        _walk(meta, "V1ObjectMeta", f"{where}.metadata", found)
        spec = {k: v for k, v in obj.items() if k not in {"apiVersion", "kind", "metadata"}}
        _custom(spec, CRDS[(api_version, kind)], where, found)
        return found
    if api_version not in VERSIONS:
        return [f"{where}: no typed model for {api_version}"]
    name = f"V1{kind}"
    if not hasattr(models, name):
        return [f"{where}: the kubernetes client has no model {name}"]
    found = []
    _walk(obj, name, where, found)
    if not found:
        try:
            client.ApiClient()._ApiClient__deserialize(obj, name)  # type: ignore[attr-defined]
        except (ValueError, TypeError) as exc:
            found.append(f"{where}: {exc}")
    return found


def _walk(value: Any, type_name: str, path: str, found: list[str]) -> None:
    if value is None:
        return
    if m := _LIST.fullmatch(type_name):
        if not isinstance(value, list):
            found.append(f"{path}: a list expected, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _walk(item, m.group(1), f"{path}[{i}]", found)
        return
    if m := _DICT.fullmatch(type_name):
        if not isinstance(value, dict):
            found.append(f"{path}: a map expected, got {type(value).__name__}")
            return
        for key, item in value.items():
            _walk(item, m.group(1) or m.group(2), f"{path}.{key}", found)
        return
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and not (type_name == "int" and isinstance(value, bool))
        if not ok:
            found.append(f"{path}: {type_name} expected, got {value!r}")
        return
    model = getattr(models, type_name)
    if not isinstance(value, dict):
        found.append(f"{path}: an object ({type_name}) expected, got {value!r}")
        return
    fields = {json_key: attr for attr, json_key in model.attribute_map.items()}
    for key, item in value.items():
        if key not in fields:
            found.append(f"{path}.{key}: unknown field (not in {type_name})")
            continue
        _walk(item, model.openapi_types[fields[key]], f"{path}.{key}", found)


def _custom(value: Any, schema: Any, path: str, found: list[str]) -> None:
    if schema is ...:
        return
    if isinstance(schema, type):
        if not isinstance(value, schema):
            found.append(f"{path}: {schema.__name__} expected, got {value!r}")
        return
    if isinstance(schema, list):
        if not isinstance(value, list):
            found.append(f"{path}: a list expected")
            return
        for i, item in enumerate(value):
            _custom(item, schema[0], f"{path}[{i}]", found)
        return
    if not isinstance(value, dict):
        found.append(f"{path}: an object expected")
        return
    for key, item in value.items():
        if key not in schema:
            found.append(f"{path}.{key}: unknown field")
        else:
            _custom(item, schema[key], f"{path}.{key}", found)
