from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# CSI volume names (pvc-<uuid>) and DNS-label-like names both fit.
ResourceName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")]
# Ids and tenants that reach a query are checked first: besides giving a clear error,
# this keeps bytes PostgreSQL refuses in text (NUL) from turning into a 500.
RESOURCE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]*$"
TENANT_NAME_PATTERN = r"^[a-z0-9_][a-z0-9_\-]*$"
ResourceId = Annotated[str, Field(min_length=1, max_length=64, pattern=RESOURCE_ID_PATTERN)]
TenantName = Annotated[str, Field(min_length=1, max_length=64, pattern=TENANT_NAME_PATTERN)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reply(BaseModel):
    """Replies and event payloads: readers ignore fields they do not know (forward compatible)."""

    model_config = ConfigDict(extra="ignore")


class ById(Message):
    id: ResourceId


class ListQuery(Message):
    limit: int = Field(default=100, ge=1, le=1000)
    # The last id of the previous page.
    starting_token: ResourceId | None = None
    # Admins may list another tenant's resources; ignored for everyone else.
    tenant: TenantName | None = None


class InventoryPage(Message):
    """A page of a service's whole inventory (every tenant; admin, for the watcher)."""

    limit: int = Field(default=1000, ge=1, le=2000)
    # The last id of the previous page.
    starting_token: ResourceId | None = None
