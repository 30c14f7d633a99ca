"""Volume types: the classes of storage a volume asks for and clusters serve."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from berth_provisioner import repo
from berth_provisioner.context import Context
from berth_shared.auth import Principal
from berth_shared.errors import AlreadyExists, InvalidArgument
from berth_shared.messages.provisioner import VolumeType, VolumeTypeCreate, VolumeTypeList


async def require_known(s: AsyncSession, names: list[str]) -> None:
    """Every name a volume type, or `invalid_argument` naming the unknown ones and listing
    the valid ones (in the detail and as `valid_types`), so the caller can pick."""
    valid = sorted(await repo.volume_types.names(s))
    unknown = sorted(set(names) - set(valid))
    if unknown:
        which = f"type {unknown[0]!r}" if len(unknown) == 1 else f"types {', '.join(map(repr, unknown))}"
        known = ", ".join(valid) if valid else "none yet (an admin creates them: POST /v1/volume-types)"
        raise InvalidArgument(
            f"unknown volume {which}; the volume types are: {known}", reason="unknown_volume_type", valid_types=valid
        )


class VolumeTypes:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def create(self, p: Principal, req: VolumeTypeCreate) -> VolumeType:
        """Idempotent: the same type again is a success, another description a conflict."""
        p.require_admin()
        async with self.ctx.db.transaction() as s:
            row = await repo.volume_types.by_name(s, req.name)
            if row is not None:
                if row.description != req.description:
                    raise AlreadyExists(f"volume type {req.name!r} exists with another description")
                return VolumeType(name=row.name, description=row.description)
            await repo.volume_types.insert(s, req.name, req.description)
        return VolumeType(name=req.name, description=req.description)

    async def list(self) -> VolumeTypeList:
        async with self.ctx.db.sessions() as s:
            rows = await repo.volume_types.all_rows(s)
        return VolumeTypeList(items=[VolumeType(name=r.name, description=r.description) for r in rows])
