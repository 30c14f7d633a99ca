"""Errors, auth, logs, settings and the event envelope."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from berth_provisioner.config import ProvisionerSettings
from berth_shared.aio import SharedRead, stop_tasks, wait_event
from berth_shared.auth import (
    KeystoneTokenValidator,
    Principal,
    StaticTokenValidator,
    bearer,
    ensure_token_file,
    read_tokens,
)
from berth_shared.backends import BackendError
from berth_shared.bus.envelope import SYSTEM_TENANT, CloudEvent, event_subject, new_event
from berth_shared.errors import (
    ERRORS_BY_CODE,
    PROBLEM_BASE,
    BerthError,
    Internal,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    error_from_problem,
)
from berth_shared.logs import JsonFormatter, configure_logging, redact
from berth_shared.settings import DEFAULT_PORTS, Settings, load_settings
from berth_testing import Tenants, eventually

# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(ERRORS_BY_CODE.values()), ids=list(ERRORS_BY_CODE))
def test_problem_round_trip(cls: type[BerthError]) -> None:
    err = cls("volume v1 is busy", reason="volume_busy", volume_id="v1", limits={"n": 3})
    problem = err.to_problem("/v1/volumes/v1")
    assert problem == {
        "type": PROBLEM_BASE + "volume_busy",
        "title": cls.title,
        "status": cls.status,
        "detail": "volume v1 is busy",
        "code": cls.code,
        "reason": "volume_busy",
        "instance": "/v1/volumes/v1",
        "volume_id": "v1",
        "limits": {"n": 3},
    }
    back = error_from_problem(json.loads(json.dumps(problem)))  # as it crosses HTTP or the bus
    assert type(back) is cls
    assert (back.detail, back.reason, back.extra) == (err.detail, err.reason, err.extra)
    assert back.to_problem("/v1/volumes/v1") == problem


def test_problem_defaults() -> None:
    err = NotFound("no such volume")
    assert err.reason == "not_found"
    assert err.to_problem() == {
        "type": PROBLEM_BASE + "not_found",
        "title": "Not found",
        "status": 404,
        "detail": "no such volume",
        "code": "not_found",
        "reason": "not_found",
    }
    # Unknown or missing codes degrade to Internal, never to a crash.
    assert type(error_from_problem({"code": "teapot", "detail": "x"})) is Internal
    assert type(error_from_problem({})) is Internal
    # Backend errors travel as the code they carry.
    assert type(error_from_problem(BackendError("disk gone").to_problem())) is Unavailable


# -- auth ------------------------------------------------------------------------------


async def test_static_token_validator(tenants: Tenants) -> None:
    validator = StaticTokenValidator(tenants.path)
    admin = await validator.validate(tenants.admin)
    assert admin.is_admin and admin.user == "admin"
    admin.require_admin()

    member = await validator.validate(tenants.a)
    assert member == Principal(tenant=tenants.tenant_a, roles=frozenset({"member"}), user=tenants.tenant_a)
    assert not member.is_admin
    with pytest.raises(PermissionDenied):
        member.require_admin()
    assert (await validator.validate(tenants.b)).tenant == tenants.tenant_b

    for bad in ("", "nope", tenants.a + "x", tenants.a[:-1], tenants.a.upper()):
        with pytest.raises(Unauthenticated):
            await validator.validate(bad)


def test_bearer_header() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    for bad in (None, "", "abc", "Basic abc", "Bearer", "Bearer "):
        with pytest.raises(Unauthenticated):
            bearer(bad)


async def test_token_file_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "tokens.json"
    tokens = ensure_token_file(path)
    assert set(tokens) == {"admin", "demo"}
    assert tokens["admin"] != tokens["demo"] and len(tokens["admin"]) > 30
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()

    assert ensure_token_file(path) == tokens  # kept, not regenerated
    assert path.read_bytes() == before
    assert read_tokens(path) == tokens
    assert not path.with_suffix(".tmp").exists()

    validator = StaticTokenValidator(path)
    assert (await validator.validate(tokens["admin"])).is_admin
    demo = await validator.validate(tokens["demo"])
    assert (demo.tenant, demo.is_admin) == ("demo", False)


def test_token_file_private_despite_a_leftover(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    leftover = path.with_suffix(".tmp")
    leftover.write_text("half a file from a crash")
    leftover.chmod(0o644)
    ensure_token_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


KEYSTONE = "http://keystone.test:5000"


def keystone(respond: Callable[[httpx.Request], httpx.Response], seen: list[httpx.Request]) -> KeystoneTokenValidator:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return respond(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return KeystoneTokenValidator(KEYSTONE + "/", "service-secret", client=client)


async def test_keystone_valid_token() -> None:
    seen: list[httpx.Request] = []
    body = {
        "token": {
            "project": {"id": "3f2a", "name": "team-a"},
            "roles": [{"id": "r1", "name": "member"}, {"id": "r2", "name": "admin"}],
            "user": {"id": "u1", "name": "alice"},
        }
    }
    validator = keystone(lambda _: httpx.Response(200, json=body), seen)
    principal = await validator.validate("user-token")
    assert principal == Principal(tenant="3f2a", roles=frozenset({"member", "admin"}), user="alice")
    [req] = seen
    assert (req.method, str(req.url)) == ("GET", KEYSTONE + "/v3/auth/tokens")
    assert req.headers["X-Auth-Token"] == "service-secret"
    assert req.headers["X-Subject-Token"] == "user-token"


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (httpx.Response(404, json={"error": {"code": 404}}), Unauthenticated),  # unknown or expired
        (httpx.Response(200, json={"token": {"roles": []}}), Unauthenticated),  # not project-scoped
        (httpx.Response(401), Unavailable),  # Keystone refuses *our* service token
        (httpx.Response(403), Unavailable),
        (httpx.Response(500), Unavailable),
        (httpx.Response(503), Unavailable),
        (httpx.Response(200, text="<html>proxy error</html>"), Unavailable),
        (httpx.Response(200, json={"unexpected": True}), Unavailable),
        (httpx.Response(200, json={"token": {"project": {"id": "p"}, "roles": [{"id": "no-name"}]}}), Unavailable),
    ],
)
async def test_keystone_failures(response: httpx.Response, error: type[BerthError]) -> None:
    validator = keystone(lambda _: response, [])
    with pytest.raises(error):
        await validator.validate("user-token")


@pytest.mark.parametrize("exc", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])
async def test_keystone_unreachable(exc: httpx.HTTPError) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(Unavailable) as err:
        await keystone(fail, []).validate("user-token")
    assert "user-token" not in err.value.detail and "service-secret" not in err.value.detail


# -- logs ------------------------------------------------------------------------------

SECRETS = ("s3cr3t-tok", "hunter2", "pa55word", "abc.DEF-ghi_jkl", "b64+/tok=", "gAAAAB-keystone", "dbpass", "xyz789")


@pytest.fixture
def log_lines() -> Iterator[tuple[logging.Logger, Callable[[], list[dict[str, Any]]]]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("berth.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


def test_json_logs_never_carry_secrets(log_lines: Any) -> None:
    logger, lines = log_lines
    logger.info(
        "calling %s with Authorization: Bearer abc.DEF-ghi_jkl",
        "provisioner",
        extra={
            "token": "s3cr3t-tok",
            "headers": {"Authorization": "Bearer b64+/tok=", "X-Auth-Token": "gAAAAB-keystone", "Accept": "json"},
            "config": {"db": {"password": "hunter2", "host": "db1"}},
            "argv": ["--password", {"secret": "pa55word"}],
            "volume_id": "vol-1",
            "tenant": "team-a",
        },
    )
    logger.warning("login with password=hunter2 and token: s3cr3t-tok failed")
    logger.warning('body {"token": "s3cr3t-tok", "name": "v1"} to postgresql://berth:dbpass@db1:5432/berth')
    logger.warning("keystone replied X-Subject-Token: gAAAAB-keystone; Basic xyz789")
    try:
        raise ConnectionError("cannot reach postgresql://berth:dbpass@db1/berth with Bearer abc.DEF-ghi_jkl")
    except ConnectionError:
        logger.exception("database down")

    out = lines()
    raw = json.dumps(out)
    for secret in SECRETS:
        assert secret not in raw, f"{secret!r} reached the log"
    first = out[0]
    # What is not a secret stays readable.
    assert first["msg"] == "calling provisioner with Authorization: Bearer ***"
    assert first["volume_id"] == "vol-1" and first["tenant"] == "team-a"
    assert first["headers"]["Accept"] == "json"
    assert first["config"]["db"]["host"] == "db1"
    assert (first["level"], first["service"], first["logger"]) == ("info", "test", "berth.test.logs")
    assert first["ts"].endswith("Z")
    assert "postgresql://berth:***@db1:5432/berth" in out[2]["msg"]
    assert "ConnectionError" in out[-1]["exc"]


def test_redact_nested() -> None:
    assert redact({"a": [{"password": "x"}], "auth_token_id": "kept"}) == {
        "a": [{"password": "***"}],
        "auth_token_id": "kept",
    }
    assert redact(("Bearer abc", 3)) == ["Bearer ***", 3]


def test_text_logs_are_scrubbed_too(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("test", level="debug", as_json=False)
        logging.getLogger("berth.test.text").info("retrying with Bearer s3cr3t-tok")
        configure_logging("test", level="info", as_json=True)
        logging.getLogger("berth.test.json").debug("not shown")
        logging.getLogger("berth.test.json").info("password=hunter2")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    err = capsys.readouterr().err
    assert "s3cr3t-tok" not in err and "hunter2" not in err
    assert "not shown" not in err
    assert json.loads(err.splitlines()[-1])["msg"] == "password=***"


# -- settings --------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("BERTH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_settings_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = load_settings(Settings, service="watcher")
    assert s.db_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/.berth/watcher.db"
    assert s.schema_name == "watcher"
    assert s.port == DEFAULT_PORTS["watcher"] == 8703
    assert s.nats_url == "nats://127.0.0.1:4322"
    assert s.tokens_path == Path(".berth") / "tokens.json"
    assert s.auth_backend == "static"
    assert s.events_stream == "BERTH_EVENTS"


def test_settings_from_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("BERTH_DATABASE_URL", "postgresql://postgres@db/berth")
    clean_env.setenv("BERTH_DB_SCHEMA", "prov_blue")
    clean_env.setenv("BERTH_NATS_URL", "nats://nats:4222")
    clean_env.setenv("BERTH_HTTP_PORT", "9000")
    clean_env.setenv("BERTH_LOG_JSON", "false")
    clean_env.setenv("BERTH_KEYSTONE_SERVICE_TOKEN", "ks-secret")
    clean_env.setenv("BERTH_DATA_DIR", str(tmp_path / "data"))
    clean_env.setenv("NATS_URL", "nats://not-ours:1")  # no prefix: ignored
    clean_env.setenv("BERTH_SERVICE", "alerts")  # the caller's service name wins

    s = load_settings(ProvisionerSettings, http_port=9100)
    assert s.service == "provisioner"
    assert s.db_url == "postgresql://postgres@db/berth"
    assert s.schema_name == "prov_blue"
    assert s.nats_url == "nats://nats:4222"
    assert s.port == 9100  # explicit overrides beat the environment
    assert s.log_json is False
    assert s.tokens_path == tmp_path / "data" / "tokens.json"
    assert isinstance(s.keystone_service_token, SecretStr)
    assert s.keystone_service_token.get_secret_value() == "ks-secret"
    assert "ks-secret" not in repr(s) and "ks-secret" not in str(s.model_dump())


def test_settings_reject_nonsense(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("BERTH_COMMAND_TIMEOUT_S", "0")
    with pytest.raises(ValidationError):
        Settings()
    clean_env.setenv("BERTH_COMMAND_TIMEOUT_S", "5")
    clean_env.setenv("BERTH_AUTH_BACKEND", "ldap")
    with pytest.raises(ValidationError):
        Settings()


# -- event envelope ----------------------------------------------------------------------


def test_new_event() -> None:
    subject, ev = new_event(
        service="provisioner", tenant="team-a", noun="volume", verb="created", subject_id="vol-1", data={"size_gib": 1}
    )
    assert subject == "berth.events.team-a.volume.created"
    assert (ev.type, ev.source, ev.subject, ev.berthtenant) == (
        "io.berth.volume.created.v1",
        "berth/provisioner",
        "vol-1",
        "team-a",
    )
    wire = json.loads(ev.model_dump_json())
    assert wire["specversion"] == "1.0" and wire["datacontenttype"] == "application/json"
    assert CloudEvent.model_validate(wire) == ev
    assert event_subject(SYSTEM_TENANT, "cluster", "registered") == "berth.events._system.cluster.registered"


@pytest.mark.parametrize("token", ["", "a.b", "*", ">", "a b", "team\n", "té"])
def test_event_subject_rejects_unsafe_tokens(token: str) -> None:
    for args in ((token, "volume", "created"), ("t", token, "created"), ("t", "volume", token)):
        with pytest.raises(ValueError):
            event_subject(*args)


# -- lifecycles ----------------------------------------------------------------------


def test_lifecycle_refuses_what_it_does_not_declare() -> None:
    from berth_shared.lifecycle import GONE, Lifecycle, TransitionNotAllowed

    door = Lifecycle(
        "door", ["open", "shut"], [("close", "open", "shut"), ("open", "shut", "open"), ("burn", "shut", GONE)]
    )
    assert door.target("open", "close") == "shut"
    assert door.target("shut", "burn") is GONE
    assert door.sources("close") == {"open"}
    assert not door.allows("shut", "close")
    with pytest.raises(TransitionNotAllowed) as exc:
        door.target("shut", "close")
    assert (exc.value.resource, exc.value.state, exc.value.event) == ("door", "shut", "close")
    with pytest.raises(ValueError, match="unknown states"):
        Lifecycle("door", ["open"], [("close", "open", "ajar")])
    with pytest.raises(ValueError, match="declared twice"):
        Lifecycle("door", ["open", "shut"], [("close", "open", "shut"), ("close", "open", "open")])


# -- asyncio helpers -----------------------------------------------------------------------


async def test_wait_event_keeps_a_cancel_that_lands_with_the_wake_up() -> None:
    event = asyncio.Event()

    async def loop() -> None:
        while True:  # a background loop's idle wait, as the services' relays and workers do
            await wait_event(event, 30.0)
            event.clear()

    task = asyncio.create_task(loop())
    await eventually(lambda: len(event._waiters) > 0, within=5.0, what="the loop waiting")
    event.set()
    task.cancel()  # in the same loop step as the wake-up
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5.0):
            await task
    event.clear()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True


async def test_stop_tasks_cancels_again_a_loop_that_lost_its_cancel() -> None:
    lost = 0

    async def loop() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost += 1  # as a library's wait_for turning the cancel into a timeout does

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    async with asyncio.timeout(10.0):
        await stop_tasks(task, every_s=0.05)
    assert task.cancelled() and lost == 1


class _Reads:
    """A read that counts itself and, when `gate` is set, waits for it: what it answers
    is the number of reads begun so far."""

    def __init__(self) -> None:
        self.started = 0
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def __call__(self) -> int:
        self.started += 1
        n = self.started
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return n


async def test_shared_read_serves_callers_asking_at_once_with_one_read() -> None:
    reads = _Reads()
    shared = SharedRead(reads)
    async with asyncio.timeout(5.0):
        got = await asyncio.gather(*(shared.get() for _ in range(5)))
    assert got == [1] * 5 and reads.started == 1


async def test_shared_read_never_answers_a_caller_with_a_read_begun_before_it_asked() -> None:
    reads = _Reads()
    reads.gate = asyncio.Event()
    shared = SharedRead(reads)
    async with asyncio.timeout(5.0):
        first = asyncio.create_task(shared.get())
        await eventually(lambda: reads.started, lambda n: n == 1, within=5.0, what="the first read under way")
        late = [asyncio.create_task(shared.get()) for _ in range(3)]  # asked while read 1 runs
        await asyncio.sleep(0)
        reads.gate.set()
        assert await first == 1
        assert await asyncio.gather(*late) == [2, 2, 2]  # one read after theirs began, shared
    assert reads.started == 2


async def test_shared_read_failure_reaches_its_callers_and_the_next_read_runs() -> None:
    reads = _Reads()
    reads.fail = ConnectionError("database away")
    shared = SharedRead(reads)
    async with asyncio.timeout(5.0):
        outcomes = await asyncio.gather(shared.get(), shared.get(), return_exceptions=True)
        assert all(isinstance(o, ConnectionError) for o in outcomes)
        reads.fail = None
        assert await shared.get() == 2


async def test_shared_read_one_caller_cancelled_leaves_the_read_to_the_others() -> None:
    reads = _Reads()
    reads.gate = asyncio.Event()
    shared = SharedRead(reads)
    async with asyncio.timeout(5.0):
        gone, stays = asyncio.create_task(shared.get()), asyncio.create_task(shared.get())
        await eventually(lambda: reads.started, lambda n: n == 1, within=5.0, what="the read under way")
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        reads.gate.set()
        assert await stays == 1
