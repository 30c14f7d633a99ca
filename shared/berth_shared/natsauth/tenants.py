"""Issuing a tenant's event-subscriber credentials: the durable pull consumer on
`berth.events.<tenant>.>` made first (by the issuing service), then a user JWT signed by the
scoped tenant-issuer key, whose permissions the server takes from that key's template.

The HTTP call (`POST /v1/event-credentials`) and `berth events credentials` sit on top.
"""

from __future__ import annotations

import time

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import BaseModel, Field

from berth_shared.auth import Principal
from berth_shared.bus.client import Bus
from berth_shared.errors import InvalidArgument, PermissionDenied
from berth_shared.natsauth.contract import (
    CONSUMER_NAME,
    CONSUMER_TAG,
    TENANT_TAG,
    consumer_name,
    inbox_prefix,
    tenant_user_name,
)
from berth_shared.natsauth.material import TenantIssuer, user_claims
from berth_shared.natsauth.nkeyjwt import NKey, creds_text, encode_jwt


class EventCredentialsRequest(BaseModel):
    model_config = {"extra": "forbid"}

    tenant: str | None = Field(default=None, description="Another tenant's (admin only); default: the caller's.")
    consumer: str = Field(default="events", pattern=CONSUMER_NAME.pattern, description="Its durable consumer's name.")
    deliver: str = Field(default="all", pattern="^(all|new)$", description="From the stream's start, or new only.")
    ttl_days: int = Field(default=365, ge=1, le=3650, description="How long the credentials are valid.")


class EventCredentials(BaseModel):
    tenant: str
    user: str
    stream: str
    consumer: str
    filter_subject: str
    inbox_prefix: str
    expires_at: int
    creds: str = Field(description="The .creds file: user JWT and its seed. A secret.")


async def issue_event_credentials(
    bus: Bus, issuer: TenantIssuer, caller: Principal, req: EventCredentialsRequest
) -> EventCredentials:
    tenant = req.tenant or caller.tenant
    if tenant != caller.tenant and not caller.is_admin:
        raise PermissionDenied("another tenant's event credentials need the admin role")
    if tenant.startswith("_"):
        raise InvalidArgument(f"{tenant!r} is not a tenant whose events can be subscribed to")
    durable = consumer_name(tenant, req.consumer)
    subject = f"berth.events.{tenant}.>"
    config = ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL if req.deliver == "all" else DeliverPolicy.NEW,
        ack_wait=30.0,
        max_ack_pending=1000,
    )
    # Create, or keep as it is: a consumer's position survives re-issuing credentials.
    try:
        await bus.js.consumer_info(issuer.stream, durable)
    except NotFoundError:
        await bus.js.add_consumer(issuer.stream, config)
    user = NKey.generate("user")
    expires = int(time.time()) + req.ttl_days * 86400
    name = tenant_user_name(tenant)
    claims = user_claims(None, issuer.account, [f"{TENANT_TAG}:{tenant}", f"{CONSUMER_TAG}:{durable}"])
    jwt = encode_jwt(user.public, name, claims, issuer.signing_key, expires=expires)
    return EventCredentials(
        tenant=tenant,
        user=name,
        stream=issuer.stream,
        consumer=durable,
        filter_subject=subject,
        inbox_prefix=inbox_prefix(name),
        expires_at=expires,
        creds=creds_text(jwt, user.seed),
    )
