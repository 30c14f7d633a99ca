"""Who may do what on the bus: NATS permissions derived from the bus contract (`docs/bus.md`).

- a **service** serves only its own command subjects (`berth.<service>.>`, queue group, and
  the `$SRV` discovery of `berth-<service>`), answers only the requests it received,
  publishes only the events its message module declares (by noun), sends commands to the other services,
  and uses JetStream only for the events stream and the leases bucket;
- the **CSI adapter** sends provisioner and attacher commands, nothing else; a **node
  agent** sends attacher commands;
- a **tenant subscriber** reads only `berth.events.<tenant>.>`: core subscriptions on it,
  and the durable pull consumers Berth made for it on that filter (`<tenant>@<name>`,
  created by the issuing call): consumer info, fetch and ack, nothing else. It can make
  no consumer (so no other filter and no push delivery elsewhere) and publish nothing but
  those API calls;
- **admin** (operators' tools) may do anything.

Every identity subscribes to replies only under its own inbox prefix (`_INBOX.<name>`),
so no one reads another's replies; Berth's clients set that prefix from their
credentials (`Bus.connect`).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berth_shared.natsauth.nkeyjwt import creds_jwt, decode_claims
from berth_shared.settings import SERVICES

LEASE_BUCKET = "berth_leases"
# The event nouns of a service whose message module does not declare its EVENTS yet.
UNDECLARED_EVENT_NOUNS: dict[str, tuple[str, ...]] = {"attacher": ("attachment", "node")}
CLIENTS: dict[str, tuple[str, ...]] = {"csi": ("provisioner", "attacher"), "node": ("attacher",)}
TENANT_TAG = "tenant"
CONSUMER_TAG = "consumer"
CONSUMER_NAME = re.compile(r"[a-z0-9][a-z0-9_\-]{0,31}")


@dataclass(frozen=True)
class Permissions:
    pub: list[str] = field(default_factory=list)
    sub: list[str] = field(default_factory=list)
    # May answer requests it received (the reply subject), whatever `pub` says.
    responses: bool = False

    def claims(self) -> dict[str, Any]:
        """The `pub`/`sub`/`resp` members of a user JWT's (or a scope template's) claims."""
        out: dict[str, Any] = {"pub": {"allow": self.pub}, "sub": {"allow": self.sub}}
        if self.responses:
            out["resp"] = {"max": 1, "ttl": 0}
        return out


def user_name(identity: str) -> str:
    """The NATS user name (and so the inbox) of a Berth identity: `svc.<service>`, `admin`."""
    return identity if identity == "admin" else f"svc.{identity}"


def inbox_prefix(name: str) -> str:
    return f"_INBOX.{name}"


def creds_inbox_prefix(creds: Path) -> str:
    """The inbox prefix of the user in a .creds file (from its JWT's name)."""
    return inbox_prefix(str(decode_claims(creds_jwt(creds.read_text()))["name"]))


def consumer_name(tenant: str, name: str) -> str:
    """A tenant's durable consumer: `<tenant>@<name>`; no tenant name has an `@`, so two
    tenants' consumers can never share a name."""
    if not CONSUMER_NAME.fullmatch(name):
        raise ValueError(f"consumer name {name!r}: 1-32 of a-z, 0-9, '_' and '-', starting with a letter or digit")
    return f"{tenant}@{name}"


def event_nouns(service: str) -> tuple[str, ...]:
    """The nouns a service's events may have: those of its message module's `EVENTS`
    (`berth_shared.messages.<service>`, the contract), so a new event is allowed as soon
    as it is declared, and only for the service that declares it."""
    try:
        module = importlib.import_module(f"berth_shared.messages.{service}")
    except ModuleNotFoundError:
        module = None
    declared = getattr(module, "EVENTS", None)
    if declared:
        return tuple(sorted({noun for noun, _verb in declared}))
    return UNDECLARED_EVENT_NOUNS.get(service, ())


def _jetstream_for_services(stream: str) -> list[str]:
    api = "$JS.API"
    kv = f"KV_{LEASE_BUCKET}"
    return [
        f"{api}.INFO",
        *(f"{api}.STREAM.{verb}.{name}" for name in (stream, kv) for verb in ("INFO", "CREATE", "UPDATE")),
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{stream}.*",
        *(f"{api}.CONSUMER.{verb}.{stream}.*" for verb in ("INFO", "DELETE", "MSG.NEXT")),
        f"$JS.ACK.{stream}.>",
        f"$KV.{LEASE_BUCKET}.>",
        f"{api}.DIRECT.GET.{kv}.>",
        f"{api}.STREAM.MSG.GET.{kv}",
    ]


def service_permissions(service: str, stream: str) -> Permissions:
    others = [f"berth.{other}.>" for other in SERVICES if other != service]
    events = [f"berth.events.*.{noun}.*" for noun in event_nouns(service)]
    micro = f"berth-{service}"
    return Permissions(
        pub=[*events, *others, *_jetstream_for_services(stream)],
        sub=[
            f"berth.{service}.>",
            *("$SRV.*", f"$SRV.*.{micro}", f"$SRV.*.{micro}.*"),
            f"{inbox_prefix(user_name(service))}.>",
        ],
        responses=True,
    )


def client_permissions(client: str) -> Permissions:
    return Permissions(
        pub=[f"berth.{service}.>" for service in CLIENTS[client]],
        sub=[f"{inbox_prefix(user_name(client))}.>"],
    )


ADMIN = Permissions(pub=[">"], sub=[">"], responses=True)


def identity_permissions(identity: str, stream: str) -> Permissions:
    if identity == "admin":
        return ADMIN
    if identity in CLIENTS:
        return client_permissions(identity)
    return service_permissions(identity, stream)


IDENTITIES = (*SERVICES, *CLIENTS, "admin")


def tenant_template(stream: str) -> Permissions:
    """The scope of the tenant-issuing signing key: a user it signs gets exactly these,
    its `tenant:` and `consumer:` tags filled in by the server (no other permissions are
    possible with that key, even if it leaks)."""
    tenant, consumer = f"{{{{tag({TENANT_TAG})}}}}", f"{{{{tag({CONSUMER_TAG})}}}}"
    return Permissions(
        pub=[
            f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            f"$JS.ACK.{stream}.{consumer}.>",
        ],
        sub=[f"{inbox_prefix('t')}.{tenant}.>", f"berth.events.{tenant}.>"],
    )


def tenant_user_name(tenant: str) -> str:
    return f"t.{tenant}"
