"""NATS decentralised auth for the bus: who may publish, serve and read what (`contract`),
the installation's keys, accounts and credentials (`material`), tenant subscriber
credentials (`tenants`)."""

from berth_shared.natsauth.contract import (
    IDENTITIES,
    Permissions,
    creds_inbox_prefix,
    identity_permissions,
    inbox_prefix,
    user_name,
)
from berth_shared.natsauth.material import AuthMaterial, TenantIssuer
from berth_shared.natsauth.nkeyjwt import NKey, creds_jwt, decode_claims, write_secret
from berth_shared.natsauth.tenants import EventCredentials, EventCredentialsRequest, issue_event_credentials

__all__ = [
    "IDENTITIES",
    "AuthMaterial",
    "EventCredentials",
    "EventCredentialsRequest",
    "NKey",
    "Permissions",
    "TenantIssuer",
    "creds_inbox_prefix",
    "creds_jwt",
    "decode_claims",
    "identity_permissions",
    "inbox_prefix",
    "issue_event_credentials",
    "user_name",
    "write_secret",
]
