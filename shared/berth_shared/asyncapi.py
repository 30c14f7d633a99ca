"""The AsyncAPI 3.0 document of the bus, generated from the message models.

Every service's message module (`berth_shared.messages.<service>`) that defines `PREFIX`,
`COMMANDS` (subject -> (request model, reply model)) and `EVENTS` ((noun, verb) -> payload
model) is described: commands as request/reply operations on core NATS, events as
CloudEvents 1.0 on JetStream subjects `berth.events.{tenant}.<noun>.<verb>`. Schemas are
the pydantic models' own JSON schemas, so the document cannot say something the code
does not accept.

    python -m berth_shared.asyncapi > docs/asyncapi.yaml

The output is deterministic (no timestamps, sorted where order carries no meaning), and
`shared/tests/test_asyncapi.py` fails when the committed file differs from a fresh run.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from berth_shared.bus.client import H_AUTH, H_DEADLINE, H_ERROR_CODE, H_IDEMPOTENCY
from berth_shared.bus.envelope import EVENTS_PREFIX, SYSTEM_TENANT, CloudEvent, event_type
from berth_shared.errors import ERRORS_BY_CODE
from berth_shared.settings import SERVICES

ASYNCAPI_VERSION = "3.0.0"
DOC_VERSION = "0.1.0"
REF = "#/components/schemas/{model}"
H_SERVICE_ERROR = "Nats-Service-Error"

# What a reader needs beyond the schema; a command or event missing here still appears.
COMMAND_NOTES: dict[str, str] = {
    "volume.create": (
        "Create a volume. The name is the idempotency key within the tenant: the same request again "
        "returns the same volume; the same name with a different spec is `already_exists`. Replies once "
        "the volume is `available`, or `aborted` if the deadline passes first (the operation goes on; "
        "retry the same request to follow it)."
    ),
    "volume.get": "One volume of the caller's tenant (admins: any tenant).",
    "volume.list": "The caller's volumes, ordered by id; page with `starting_token` = the previous `next_token`.",
    "volume.expand": "Grow a volume (never shrinks). Asking the current size again is a no-op.",
    "volume.delete": "Delete a volume without snapshots. Replies `{}` once it is gone.",
    "volume.retype": (
        "Move a volume to another volume type in place: its cluster must serve the type (else `invalid_argument`, "
        "reason `type_not_on_cluster`); the data stays. The type it has already is a no-op."
    ),
    "volume.locate": "Where a volume lives (backend kind and its config), for the attacher and node side. Admin.",
    "snapshot.create": "Snapshot a volume; the name is the idempotency key within the tenant.",
    "snapshot.get": "One snapshot of the caller's tenant.",
    "snapshot.list": "The caller's snapshots, optionally of one volume.",
    "snapshot.delete": "Delete a snapshot. Replies `{}` once it is gone.",
    "cluster.register": "Register a storage cluster; an active one takes new volumes at once. Admin.",
    "cluster.update": "Change a cluster's state (active/draining/readonly), capacity, ratio, types or tenants. Admin.",
    "cluster.list": "Every storage cluster with its provisioned and backend figures. Admin.",
    "type.create": "Create a volume type (idempotent on the same description). Admin.",
    "type.list": "Every volume type.",
    "quota.set": "Set a tenant's limits (volumes, gigabytes). Admin.",
    "quota.get": "A tenant's limits and usage (reservations of in-flight creates count as used).",
    "run.start": (
        "Queue a run of a watcher job (qos, orphans, reclaim, usage); the leader runs it. With `wait_s`, "
        "answers once it finished or the wait is over. Admin."
    ),
    "run.get": "One run record: sources read, findings, actions, partial or complete. Admin.",
    "run.list": "Run records, newest first; optionally of one job. Admin.",
    "finding.list": "Findings of the caller's tenant (admins: every tenant and `_system`), open ones by default.",
    "finding.get": "One finding: what it is, since when, what to do.",
    "finding.ignore": "Mark a finding as fine (never acted on, not reported again). Admin.",
    "finding.quarantine": "Quarantine a finding's backend object now (never deletes: restorable). Admin.",
    "quarantine.list": "What the watcher quarantined, and when it will be purged. Admin.",
    "quarantine.restore": "Put a quarantined object back where it was, data untouched. Admin.",
    "quarantine.purge": "Purge a quarantined object now, before its time. Admin.",
    "qos.policy_set": "Set a volume type's size-scaled QoS limits; the next qos run applies them. Admin.",
    "qos.policy_list": "Every volume type's QoS policy.",
    "qos.policy_delete": "Remove a volume type's QoS policy (its volumes become unlimited on the next run). Admin.",
    "qos.status": "Per volume: the limits wanted and applied, whether enforced, and the measured load. Admin.",
    "usage.get": "Provisioned and used bytes, overcommit and growth per tenant, cluster and volume type. Admin.",
    "forecast.list": "Per cluster: fill level, growth and days until its fill threshold. Admin.",
}
EVENT_NOTES: dict[tuple[str, str], str] = {
    ("volume", "created"): "A volume became `available`.",
    ("volume", "create_failed"): (
        "A create was rolled back (record, backend object and reservations removed); `data.status` is "
        "`error` and `data.error` says why."
    ),
    ("volume", "expanded"): "A volume grew; `data.size_gib` is the new size.",
    ("volume", "deleted"): "A volume was deleted; `data` is its last state.",
    ("volume", "retyped"): (
        "A volume moved to another volume type in place; `data.previous_type` is the old one (the watcher applies "
        "the new type's IO limits)."
    ),
    ("snapshot", "created"): "A snapshot became `available`.",
    ("snapshot", "deleted"): "A snapshot was deleted; `data` is its last state.",
    ("cluster", "registered"): f"A storage cluster was registered (tenant token `{SYSTEM_TENANT}`).",
    ("cluster", "updated"): f"A storage cluster's settings changed (tenant token `{SYSTEM_TENANT}`).",
    ("quota", "updated"): "A tenant's quota limits were set.",
    ("finding", "opened"): (
        "The watcher confirmed a finding (an orphan, a stale attachment, a single-writer violation, a volume at "
        "its QoS limit, a cluster near full); `data.severity` says how urgent, `data.advice` what to do. "
        f"Tenant token `{SYSTEM_TENANT}` when the owner is unknown."
    ),
    ("finding", "resolved"): "A finding went away; `data.resolution` says how.",
    ("quarantine", "created"): "The watcher quarantined a backend object (restorable until `data.purge_after`).",
    ("quarantine", "restored"): "A quarantined object was put back.",
    ("quarantine", "purged"): "A quarantined object was purged for good.",
    ("qos", "drift_repaired"): "A volume's IO limits had changed behind the watcher's back and were put back.",
    ("capacity", "forecast"): f"A cluster's fill level and forecast, every usage run (tenant token `{SYSTEM_TENANT}`).",
    ("pv", "reclaimed"): "A Released PV's volume was deleted through the provisioner after its TTL.",
    ("watcher_run", "finished"): f"A watcher run ended (complete, partial or failed; tenant token `{SYSTEM_TENANT}`).",
}


@dataclass(frozen=True)
class Command:
    service: str
    subject: str
    request: type[BaseModel]
    reply: type[BaseModel]

    @property
    def action(self) -> str:
        """`volume.create` for `berth.provisioner.volume.create`."""
        return self.subject.split(".", 2)[2]

    @property
    def key(self) -> str:
        return _camel(self.service, *self.action.split("."))


@dataclass(frozen=True)
class Event:
    service: str
    noun: str
    verb: str
    payload: type[BaseModel]

    @property
    def key(self) -> str:
        return _camel(self.noun, self.verb)

    @property
    def address(self) -> str:
        return f"{EVENTS_PREFIX}.{{tenant}}.{self.noun}.{self.verb}"


def _camel(*parts: str) -> str:
    words = [w for p in parts for w in re.split(r"[_\-.]", p) if w]
    return words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])


def message_modules() -> list[tuple[str, ModuleType]]:
    """Each service's message module that declares commands or events, in service order."""
    found: list[tuple[str, ModuleType]] = []
    for service in SERVICES:
        try:
            module = importlib.import_module(f"berth_shared.messages.{service}")
        except ModuleNotFoundError:
            continue
        if hasattr(module, "COMMANDS") or hasattr(module, "EVENTS"):
            found.append((service, module))
    return found


def collect(modules: Iterable[tuple[str, ModuleType]]) -> tuple[list[Command], list[Event]]:
    commands: list[Command] = []
    events: list[Event] = []
    for service, module in modules:
        for subject, (request, reply) in getattr(module, "COMMANDS", {}).items():
            commands.append(Command(service, subject, request, reply))
        for (noun, verb), payload in getattr(module, "EVENTS", {}).items():
            events.append(Event(service, noun, verb, payload))
    return commands, events


def _schemas(commands: list[Command], events: list[Event]) -> dict[str, Any]:
    """Every model's JSON schema under components/schemas, refs pointing there."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for c in commands:
        wanted[(c.request, "validation")] = None
        wanted[(c.reply, "serialization")] = None
    for e in events:
        wanted[(e.payload, "serialization")] = None
    wanted[(CloudEvent, "serialization")] = None
    _, top = models_json_schema(list(wanted), ref_template=REF)
    defs: dict[str, Any] = top.get("$defs", {})
    return dict(sorted(defs.items()))


def _problem_schema() -> dict[str, Any]:
    """The problem body of an error reply (RFC 9457 members plus Berth's code and reason)."""
    return {
        "type": "object",
        "title": "Problem",
        "description": (
            "RFC 9457 problem details, the same body as the HTTP API's application/problem+json. "
            "`code` is the gRPC/CSI-style class; `reason` narrows it (e.g. `quota_exceeded` under "
            "`resource_exhausted`). Some errors add members (`errors` for validation, `volume_id`, "
            "`rejections`)."
        ),
        "required": ["type", "title", "status", "detail", "code", "reason"],
        "additionalProperties": True,
        "properties": {
            "type": {"type": "string", "description": "https://berth.dev/problems/<reason>"},
            "title": {"type": "string"},
            "status": {"type": "integer", "description": "The matching HTTP status"},
            "detail": {"type": "string"},
            "code": {"type": "string", "enum": sorted(ERRORS_BY_CODE)},
            "reason": {"type": "string"},
            "instance": {"type": "string", "description": "The command's subject"},
            "errors": {
                "type": "array",
                "description": "Validation failures (reason `validation_failed`)",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    }


def _command_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "required": [H_AUTH],
        "properties": {
            H_AUTH: {"type": "string", "pattern": "^Bearer .+$", "description": "`Bearer <token>`"},
            H_IDEMPOTENCY: {
                "type": "string",
                "description": "The caller's idempotency key (CSI: the request name, or volume+node)",
            },
            H_DEADLINE: {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": (
                    "Unix epoch milliseconds. The handler waits for its operation until then and replies "
                    "`aborted` if it is still running; the operation itself goes on."
                ),
            },
            "traceparent": {"type": "string", "description": "W3C trace context"},
        },
    }


def _error_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "required": [H_ERROR_CODE, H_SERVICE_ERROR],
        "properties": {
            H_ERROR_CODE: {
                "type": "string",
                "pattern": "^[0-9]{3}$",
                "description": "The HTTP status of the error, as a string; its presence marks an error reply",
            },
            H_SERVICE_ERROR: {"type": "string", "description": "The problem's `detail`"},
        },
    }


def _event_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["Nats-Msg-Id"],
        "properties": {
            "Nats-Msg-Id": {
                "type": "string",
                "description": "The CloudEvent `id`: JetStream drops a republish within the duplicate window",
            },
        },
    }


def _event_schema(e: Event) -> dict[str, Any]:
    return {
        "title": f"{event_type(e.noun, e.verb)} (CloudEvent carrying a {e.payload.__name__})",
        "allOf": [
            {"$ref": REF.format(model="CloudEvent")},
            {
                "type": "object",
                "required": ["specversion", "id", "source", "type", "subject", "time", "berthtenant", "data"],
                "properties": {
                    "specversion": {"const": "1.0"},
                    "type": {"const": event_type(e.noun, e.verb)},
                    "source": {"const": f"berth/{e.service}"},
                    "subject": {"type": "string", "description": "The resource's id"},
                    "datacontenttype": {"const": "application/json"},
                    "berthtenant": {
                        "type": "string",
                        "description": f"The tenant (the subject's tenant token; `{SYSTEM_TENANT}` for cluster-level)",
                    },
                    "data": {"$ref": REF.format(model=e.payload.__name__)},
                },
            },
        ],
    }


def build_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document for every service's commands and events."""
    commands, events = collect(message_modules())
    schemas = _schemas(commands, events)
    schemas["Problem"] = _problem_schema()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {
        "Problem": {
            "name": "Problem",
            "title": "Error reply",
            "summary": f"Any command's error: `{H_ERROR_CODE}` header set, problem body",
            "contentType": "application/json",
            "headers": _error_headers(),
            "payload": {"$ref": REF.format(model="Problem")},
        }
    }

    for c in commands:
        request_key, reply_key = f"{c.key}Request", f"{c.key}Reply"
        note = COMMAND_NOTES.get(c.action, "")
        messages[request_key] = {
            "name": request_key,
            "title": f"{c.subject} request",
            "contentType": "application/json",
            "headers": _command_headers(),
            "payload": {"$ref": REF.format(model=c.request.__name__)},
        }
        messages[reply_key] = {
            "name": reply_key,
            "title": f"{c.subject} reply",
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model=c.reply.__name__)},
        }
        channels[c.key] = {
            "address": c.subject,
            "title": c.subject,
            "description": note or f"The `{c.action}` command of the {c.service}.",
            "messages": {"request": {"$ref": f"#/components/messages/{request_key}"}},
        }
        channels[f"{c.key}Inbox"] = {
            "address": None,
            "description": f"The requester's inbox (the NATS reply subject of a {c.subject} request).",
            "messages": {
                "reply": {"$ref": f"#/components/messages/{reply_key}"},
                "error": {"$ref": "#/components/messages/Problem"},
            },
        }
        operation: dict[str, Any] = {"action": "receive", "title": c.subject}
        if note:
            operation["summary"] = note
        operations[c.key] = operation | {
            "description": (
                f"Served by the berth-{c.service} NATS micro service (queue group berth-{c.service}: "
                "any replica answers)."
            ),
            "channel": {"$ref": f"#/channels/{c.key}"},
            "messages": [{"$ref": f"#/channels/{c.key}/messages/request"}],
            "security": [{"$ref": "#/components/securitySchemes/bearer"}],
            "reply": {
                "channel": {"$ref": f"#/channels/{c.key}Inbox"},
                "messages": [
                    {"$ref": f"#/channels/{c.key}Inbox/messages/reply"},
                    {"$ref": f"#/channels/{c.key}Inbox/messages/error"},
                ],
            },
        }

    for e in events:
        message_key = f"{e.key}Event"
        schema_key = message_key[0].upper() + message_key[1:]
        schemas[schema_key] = _event_schema(e)
        messages[message_key] = {
            "name": message_key,
            "title": event_type(e.noun, e.verb),
            "summary": EVENT_NOTES.get((e.noun, e.verb), f"{e.noun} {e.verb}"),
            "contentType": "application/cloudevents+json",
            "headers": _event_headers(),
            "payload": {"$ref": REF.format(model=schema_key)},
        }
        channels[message_key] = {
            "address": e.address,
            "title": e.address,
            "description": EVENT_NOTES.get((e.noun, e.verb), f"{e.noun} {e.verb}"),
            "parameters": {"tenant": {"$ref": "#/components/parameters/tenant"}},
            "messages": {"event": {"$ref": f"#/components/messages/{message_key}"}},
        }
        operations[message_key] = {
            "action": "send",
            "title": f"{event_type(e.noun, e.verb)} from berth/{e.service}",
            "description": (
                "Written to the outbox in the transaction of the state change, then published to the "
                "JetStream stream over berth.events.> with Nats-Msg-Id = the event id."
            ),
            "channel": {"$ref": f"#/channels/{message_key}"},
            "messages": [{"$ref": f"#/channels/{message_key}/messages/event"}],
        }

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Berth bus",
            "version": DOC_VERSION,
            "description": (
                "Commands (request/reply on core NATS, subjects berth.<service>.<noun>.<verb>) and events "
                "(CloudEvents 1.0 on the JetStream stream over berth.events.>, subjects "
                "berth.events.<tenant>.<noun>.<verb>). Generated from the pydantic models in "
                "berth_shared.messages by `python -m berth_shared.asyncapi`; do not edit by hand. "
                "Prose: docs/bus.md."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "embedded": {
                "host": "127.0.0.1:4322",
                "protocol": "nats",
                "description": "The embedded stack (`berth up`); production: your NATS cluster with JetStream",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "parameters": {
                "tenant": {
                    "description": (
                        f"The tenant the event belongs to; `{SYSTEM_TENANT}` for cluster-level events. A team's "
                        "NATS permission is one pattern: berth.events.<tenant>.>"
                    ),
                }
            },
            "securitySchemes": {
                "bearer": {
                    "type": "httpApiKey",
                    "in": "header",
                    "name": H_AUTH,
                    "description": (
                        "`Authorization: Bearer <token>` in the request's NATS headers: a token from the static "
                        "token file (embedded default) or a Keystone token. The admin role is needed where noted."
                    ),
                }
            },
        },
    }


# -- YAML -----------------------------------------------------------------------------
# A small emitter for the JSON data model, so the project needs no YAML library: mappings
# and sequences in block style, strings plain when unambiguous, else JSON-quoted (a JSON
# string is a valid YAML double-quoted scalar).

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./\-]*$")
_RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in _RESERVED:
            return value
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _block_literal(value: str) -> bool:
    """Multi-line text that a `|-` block keeps exactly."""
    lines = value.split("\n")
    return (
        len(lines) > 1
        and not value.endswith("\n")
        and not lines[0].startswith(" ")
        and all(line == line.rstrip() and line.isprintable() for line in lines)
    )


def _emit(value: Any, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            head = f"{pad}{_scalar(str(key))}:"
            if isinstance(item, dict | list) and item:
                out.append(head)
                _emit(item, indent + 1, out)
            elif isinstance(item, str) and _block_literal(item):
                out.append(f"{head} |-")
                out.extend(f"{pad}  {line}" if line else "" for line in item.split("\n"))
            else:
                out.append(f"{head} {_inline(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                sub: list[str] = []
                _emit(item, indent + 1, sub)
                # The first line moves up beside the dash.
                out.append(f"{pad}- {sub[0].lstrip()}")
                out.extend(sub[1:])
            else:
                out.append(f"{pad}- {_inline(item)}")
    else:
        out.append(f"{pad}{_inline(value)}")


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def to_yaml(document: dict[str, Any]) -> str:
    out: list[str] = []
    _emit(document, 0, out)
    return "\n".join(out) + "\n"


HEADER = "# Generated from berth_shared.messages by `python -m berth_shared.asyncapi`; do not edit.\n"


def render() -> str:
    return HEADER + to_yaml(build_document())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if args and args[0] == "--json":
        sys.stdout.write(json.dumps(build_document(), indent=2) + "\n")
        return 0
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
