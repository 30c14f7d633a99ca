"""Quotas: each tenant's limits on volumes and GiB (usage is kept by repo/accounting.py)."""

from __future__ import annotations

from berth_provisioner import repo
from berth_provisioner.context import Context
from berth_shared.auth import Principal
from berth_shared.messages.provisioner import Quota, QuotaSet


class Quotas:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def set(self, p: Principal, req: QuotaSet) -> Quota:
        p.require_admin()
        async with self.ctx.db.transaction() as s:
            row = await repo.quotas.set_limits(s, req.tenant, req.volumes, req.gigabytes)
            out = Quota.model_validate(row._mapping)
            await self.ctx.events.emit(s, req.tenant, "quota", "updated", req.tenant, out.model_dump(mode="json"))
        self.ctx.events.notify()
        return out

    async def get(self, p: Principal, tenant: str | None) -> Quota:
        target = tenant or p.tenant
        if target != p.tenant:
            p.require_admin()
        async with self.ctx.db.sessions() as s:
            row = await repo.quotas.get(s, target)
        if row is None:
            volumes, gigabytes = self.ctx.default_quota
            return Quota(tenant=target, volumes=volumes, gigabytes=gigabytes, used_volumes=0, used_gigabytes=0)
        return Quota.model_validate(row._mapping)
