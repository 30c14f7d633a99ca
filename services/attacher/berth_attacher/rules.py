"""Who may be granted a volume (pure; no I/O). The single-writer invariant lives here."""

from __future__ import annotations

from dataclasses import dataclass

from berth_shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, ResourceExhausted
from berth_shared.messages.attacher import SINGLE_NODE_MODES

SHARED_FS_BACKENDS = frozenset({"cephfs", "manila"})
# Block volumes several nodes may write: Cinder decides per volume type (only `multiattach`
# types take a second attachment; the others refuse it, which the publish reports).
MULTI_WRITER_BLOCK_BACKENDS = frozenset({"cinder"})


@dataclass(frozen=True)
class Grant:
    node_id: str
    access_mode: str
    readonly: bool


def check_mode(access_mode: str, readonly: bool, backend: str) -> None:
    if access_mode == "multi_node_multi_writer" and backend not in SHARED_FS_BACKENDS | MULTI_WRITER_BLOCK_BACKENDS:
        raise InvalidArgument(
            f"access mode {access_mode} needs a shared file system; backend {backend} is block storage",
            reason="access_mode_unsupported",
        )
    if access_mode in ("single_node_reader_only", "multi_node_reader_only") and not readonly:
        raise InvalidArgument(f"access mode {access_mode} must be published readonly", reason="readonly_required")


def check_room(node_id: str, held: int, max_volumes: int) -> None:
    """A new grant to a node holding `held` volumes, whose limit is `max_volumes` (0: none)."""
    if max_volumes and held >= max_volumes:
        raise ResourceExhausted(
            f"node {node_id} already has {held} volumes published, its maximum (max_volumes_per_node "
            f"{max_volumes}); unpublish one first",
            reason="node_volume_limit",
            node_id=node_id,
            max_volumes=max_volumes,
        )


def writes(g: Grant) -> bool:
    return not g.readonly


def decide(existing: list[Grant], want: Grant) -> Grant | None:
    """Return the existing grant when `want` repeats it (idempotent), None when a new grant
    is allowed; raise when it would break the single-writer invariant."""
    for g in existing:
        if g.node_id == want.node_id:
            if g.access_mode == want.access_mode and g.readonly == want.readonly:
                return g
            raise AlreadyExists(
                f"volume already published to {g.node_id} with {g.access_mode}"
                f"{' (readonly)' if g.readonly else ''}; unpublish first",
                reason="incompatible_publish",
            )
    others = [g for g in existing if g.node_id != want.node_id]
    if not others:
        return None
    holder = others[0]
    if want.access_mode in SINGLE_NODE_MODES or any(g.access_mode in SINGLE_NODE_MODES for g in others):
        raise FailedPrecondition(
            f"volume is published to node {holder.node_id}; it can be attached elsewhere only after that node "
            "detaches it or is fenced",
            reason="published_elsewhere",
            holder=holder.node_id,
        )
    if writes(want):
        # A second writer only among multi-writer grants (a single-writer grant was promised
        # to be the only one); and no writer at all beside reader-only-many grants.
        for g in others:
            if writes(g) and not (want.access_mode == g.access_mode == "multi_node_multi_writer"):
                raise FailedPrecondition(
                    f"volume already has a writer on node {g.node_id}", reason="published_elsewhere", holder=g.node_id
                )
            if g.access_mode == "multi_node_reader_only":
                raise FailedPrecondition(
                    f"volume is published reader-only to node {g.node_id}; no node may write it meanwhile",
                    reason="published_elsewhere",
                    holder=g.node_id,
                )
    if want.access_mode == "multi_node_reader_only" and any(writes(g) for g in others):
        writer = next(g for g in others if writes(g))
        raise FailedPrecondition(
            f"volume is written on node {writer.node_id}", reason="published_elsewhere", holder=writer.node_id
        )
    return None
