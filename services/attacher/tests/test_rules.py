"""The single-writer rules (pure): who may be granted a volume, for every CSI access mode."""

from __future__ import annotations

import itertools

import pytest

from berth_attacher import rules
from berth_attacher.rules import Grant, check_mode, check_room, decide
from berth_shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, ResourceExhausted
from berth_shared.messages.attacher import SINGLE_NODE_MODES

SNW, SNRO, SNSW, SNMW = (
    "single_node_writer",
    "single_node_reader_only",
    "single_node_single_writer",
    "single_node_multi_writer",
)
MNRO, MNSW, MNMW = "multi_node_reader_only", "multi_node_single_writer", "multi_node_multi_writer"
READER_ONLY = {SNRO, MNRO}
ALL_MODES = sorted({SNW, SNRO, SNSW, SNMW, MNRO, MNSW, MNMW})
assert set(SINGLE_NODE_MODES) == {SNW, SNRO, SNSW, SNMW}


def grant(node: str, mode: str, readonly: bool | None = None) -> Grant:
    return Grant(node, mode, mode in READER_ONLY if readonly is None else readonly)


def valid_grants(node: str) -> list[Grant]:
    """Every grant check_mode lets through on a shared file system (the widest backend)."""
    out = []
    for mode in ALL_MODES:
        for ro in (False, True):
            try:
                check_mode(mode, ro, "cephfs")
            except InvalidArgument:
                continue
            out.append(Grant(node, mode, ro))
    return out


def refused_holder(existing: list[Grant], want: Grant) -> str:
    with pytest.raises(FailedPrecondition) as exc:
        decide(existing, want)
    assert exc.value.reason == "published_elsewhere"
    holder = str(exc.value.extra["holder"])
    assert holder in exc.value.detail
    assert holder in {g.node_id for g in existing}
    return holder


# -- check_mode ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["file", "rbd"])
def test_multi_node_multi_writer_is_refused_on_block_backends(backend: str) -> None:
    for ro in (False, True):
        with pytest.raises(InvalidArgument) as exc:
            check_mode(MNMW, ro, backend)
        assert exc.value.reason == "access_mode_unsupported"
        assert backend in exc.value.detail


def test_cinder_decides_multi_writer_block_by_volume_type() -> None:
    """Only Cinder's multiattach types take a second attachment; Cinder refuses the others."""
    check_mode(MNMW, False, "cinder")


@pytest.mark.parametrize("backend", sorted(rules.SHARED_FS_BACKENDS))
def test_multi_node_multi_writer_is_allowed_on_shared_file_systems(backend: str) -> None:
    check_mode(MNMW, False, backend)
    check_mode(MNMW, True, backend)


@pytest.mark.parametrize("mode", sorted(READER_ONLY))
def test_reader_only_modes_must_be_published_readonly(mode: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        check_mode(mode, False, "file")
    assert exc.value.reason == "readonly_required"
    check_mode(mode, True, "file")


@pytest.mark.parametrize("mode", [SNW, SNSW, SNMW, MNSW])
@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("backend", ["file", "rbd", "cephfs"])
def test_writer_modes_are_fine_on_every_backend(mode: str, readonly: bool, backend: str) -> None:
    check_mode(mode, readonly, backend)


# -- decide: the same node ---------------------------------------------------------


def test_first_grant_is_always_allowed() -> None:
    for want in valid_grants("n1"):
        assert decide([], want) is None


def test_identical_repeat_is_idempotent_for_every_mode() -> None:
    for g in valid_grants("n1"):
        assert decide([g], g) == g
        # ...also when other nodes hold compatible grants of the volume.
        if g.access_mode == MNRO:
            assert decide([grant("n0", MNRO), g], g) == g


def test_any_other_grant_to_the_same_node_is_incompatible() -> None:
    pairs = 0
    for held, want in itertools.product(valid_grants("n1"), valid_grants("n1")):
        if held == want:
            continue
        with pytest.raises(AlreadyExists) as exc:
            decide([held], want)
        assert exc.value.reason == "incompatible_publish"
        assert "n1" in exc.value.detail
        pairs += 1
    assert pairs > 50  # every (mode, readonly) pair against every other one


# -- decide: single-node modes against another node ---------------------------------


@pytest.mark.parametrize("mode", sorted(SINGLE_NODE_MODES))
def test_single_node_holder_refuses_every_other_node(mode: str) -> None:
    held = grant("holder", mode)
    for want in valid_grants("other"):
        assert refused_holder([held], want) == "holder"


@pytest.mark.parametrize("mode", sorted(SINGLE_NODE_MODES))
def test_single_node_request_refused_while_any_other_node_holds_it(mode: str) -> None:
    for held in valid_grants("holder"):
        assert refused_holder([held], grant("other", mode)) == "holder"


def test_readonly_single_node_grant_is_still_exclusive() -> None:
    assert refused_holder([grant("a", SNW, readonly=True)], grant("b", SNW, readonly=True)) == "a"
    assert refused_holder([grant("a", SNRO)], grant("b", SNRO)) == "a"


# -- decide: multi-node modes ------------------------------------------------------------


def test_multi_node_reader_only_many_readers() -> None:
    held: list[Grant] = []
    for i in range(5):
        want = grant(f"r{i}", MNRO)
        assert decide(held, want) is None
        held.append(want)
    # ...with readonly multi-node readers of other modes too.
    assert decide(held, grant("r-sw", MNSW, readonly=True)) is None


def test_multi_node_reader_only_refused_while_someone_writes() -> None:
    assert refused_holder([grant("w", MNSW), grant("r", MNSW, readonly=True)], grant("x", MNRO)) == "w"
    assert refused_holder([grant("w", MNMW)], grant("x", MNRO)) == "w"


def test_multi_node_single_writer_one_writer_and_readers() -> None:
    held = [grant("w", MNSW)]
    for i in range(3):
        reader = grant(f"r{i}", MNSW, readonly=True)
        assert decide(held, reader) is None
        held.append(reader)
    # A second writer, whichever multi-node mode it asks for, names the writer.
    assert refused_holder(held, grant("w2", MNSW)) == "w"
    assert refused_holder(held, grant("w2", MNMW)) == "w"


def test_multi_node_single_writer_writer_may_join_readers() -> None:
    held = [grant("r1", MNSW, readonly=True), grant("r2", MNSW, readonly=True)]
    assert decide(held, grant("w", MNSW)) is None


def test_no_writer_joins_multi_node_reader_only_readers() -> None:
    """Reader-only-many readers were promised that nobody writes: symmetric to the rule above."""
    held = [grant("r1", MNRO), grant("r2", MNRO)]
    assert refused_holder(held, grant("w", MNSW)) in {"r1", "r2"}
    assert refused_holder(held, grant("w", MNMW)) in {"r1", "r2"}


def test_multi_node_multi_writer_many_writers() -> None:
    held: list[Grant] = []
    for i in range(4):
        want = grant(f"w{i}", MNMW)
        assert decide(held, want) is None
        held.append(want)
    assert decide(held, grant("ro", MNMW, readonly=True)) is None
    # A single-writer request cannot join a volume that already has writers.
    assert refused_holder(held, grant("x", MNSW)) == "w0"


def test_released_grants_are_not_passed_to_decide_so_any_mode_goes() -> None:
    # The service passes only attached grants; with none left every valid grant is allowed.
    for want in valid_grants("b"):
        assert decide([], want) is None


def test_single_writer_invariant_over_every_sequence_of_two_nodes() -> None:
    """Whatever the order of requests, at most one node writes unless every writer is multi-writer."""
    for first, second in itertools.product(valid_grants("a"), valid_grants("b")):
        try:
            decide([first], second)
        except FailedPrecondition:
            continue
        granted = [first, second]
        writers = [g for g in granted if not g.readonly]
        if len(writers) > 1:
            assert all(g.access_mode == MNMW for g in writers), granted
        assert not any(g.access_mode in SINGLE_NODE_MODES for g in granted), granted
        if any(g.access_mode == MNRO for g in granted):
            assert not writers, granted


def test_a_node_takes_volumes_up_to_its_maximum() -> None:
    check_room("n1", 0, 1)
    check_room("n1", 500, 0)  # 0: the node sets no limit
    for held in (1, 2):
        with pytest.raises(ResourceExhausted) as err:
            check_room("n1", held, 1)
        assert err.value.reason == "node_volume_limit" and err.value.extra["max_volumes"] == 1
