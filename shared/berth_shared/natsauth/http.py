"""`POST /v1/event-credentials`: a tenant's event-subscriber credentials over HTTP. Served by
the service whose settings name the tenant issuer (`BERTH_NATS_TENANT_ISSUER`: the
provisioner in every shipped deployment); `berth events credentials` calls it."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, status

from berth_shared.http import PROBLEM_RESPONSES, Caller
from berth_shared.natsauth.material import TenantIssuer
from berth_shared.natsauth.tenants import EventCredentials, EventCredentialsRequest, issue_event_credentials


def event_credentials_router(issuer_file: Path) -> APIRouter:
    router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)
    issuer = TenantIssuer.load(issuer_file)

    @router.post("/event-credentials", status_code=status.HTTP_201_CREATED, tags=["events"])
    async def issue(body: EventCredentialsRequest, request: Request, caller: Caller) -> EventCredentials:
        """NATS credentials that read the caller's tenant's events (`berth.events.<tenant>.>`)
        through its durable consumer `<tenant>@<consumer>`, and nothing else (an admin: any
        tenant's, with `tenant`). The consumer is made first, or kept as it is. The reply
        holds the `.creds` file: a secret."""
        return await issue_event_credentials(request.app.state.rt.bus, issuer, caller, body)

    return router
