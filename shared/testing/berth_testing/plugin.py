"""Pytest fixtures shared by every service's tests (the root conftest.py loads this plugin):
a real nats-server, the service DB (PostgreSQL when BERTH_TEST_DATABASE_URL is set, else
SQLite), tokens, settings, a real Ceph and a real OpenStack."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from berth_shared.natsauth import AuthMaterial
from berth_shared.natsserver import NatsServer
from berth_shared.settings import Settings
from berth_testing.apps import Tenants, drop_schemas, write_tenants
from berth_testing.ceph import CephCluster, CephUnavailable, ensure_packages
from berth_testing.openstack import OpenStack
from berth_testing.openstack_venv import OpenStackUnavailable
from berth_testing.secure_nats import SecureNats

TEST_DB_ENV = "BERTH_TEST_DATABASE_URL"
EVENTS_STREAM = Settings().events_stream
CEPH_REQUIRED_ENV = "BERTH_REQUIRE_CEPH"
OPENSTACK_REQUIRED_ENV = "BERTH_REQUIRE_OPENSTACK"
S = TypeVar("S", bound=Settings)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def secure_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureNats]:
    """A nats-server with Berth's accounts and permissions on (the rest of the suite uses the
    open `nats_server`): credentials for every identity in `.auth`."""
    base = tmp_path_factory.mktemp("secure-nats")
    auth = AuthMaterial(base / "auth").ensure(EVENTS_STREAM)
    server = NatsServer(base / "store", auth_conf=auth.auth_conf)
    server.start()
    yield SecureNats(server, auth)
    server.stop()


@pytest.fixture
def tenants(tmp_path: Path) -> Tenants:
    return write_tenants(tmp_path)


@pytest.fixture
def db_url(tmp_path: Path) -> str | None:
    """None means the embedded default (SQLite under the data dir)."""
    return os.environ.get(TEST_DB_ENV) or None


class MakeSettings(Protocol):
    """The `make_settings` fixture: a service's own settings class (its `service` default
    names the service), with this test's NATS, database schema, tokens and data dir, and
    `overrides` on top."""

    def __call__(self, settings_cls: type[S], /, **overrides: Any) -> S: ...


@pytest.fixture
def make_settings(
    tmp_path: Path, nats_server: NatsServer, tenants: Tenants, db_url: str | None
) -> Iterator[MakeSettings]:
    schemas: list[str] = []

    def make(settings_cls: type[S], /, **overrides: Any) -> S:
        service = str(overrides.get("service") or settings_cls.model_fields["service"].default)
        schema = f"{service}_{uuid.uuid4().hex[:10]}"
        schemas.append(schema)
        values: dict[str, Any] = {
            "service": service,
            "data_dir": tmp_path / "berth",
            "nats_url": nats_server.url,
            "database_url": db_url,
            "db_schema": schema,
            "token_file": tenants.path,
            "log_json": False,
            "outbox_poll_interval_s": 0.2,
        }
        values.update(overrides)
        return settings_cls(**values)

    yield make
    if db_url and schemas:
        drop_schemas(db_url, schemas)


@pytest.fixture(scope="session")
def ceph() -> Iterator[CephCluster]:
    """One real Ceph cluster (mon, mgr, OSD, MDS on loopback) for the whole session, with
    an RBD pool `rbd` (plus `rbd-data`) and a file system `cephfs`. Installs the Debian
    packages when missing. Skips with the reason when Ceph cannot run here, unless
    BERTH_REQUIRE_CEPH=1 (CI on machines that can run it), where that is a failure."""
    cluster = start_ceph(CephCluster())
    yield cluster
    cluster.stop()


def start_ceph(cluster: CephCluster) -> CephCluster:
    """Install the packages when missing and start `cluster`; skip the test with the reason
    when Ceph cannot run here, or fail it under BERTH_REQUIRE_CEPH=1. (For fixtures that need
    a cluster of their own, e.g. one bound to a partition lab's bridge.)"""
    try:
        ensure_packages()
        cluster.start()
    except (CephUnavailable, OSError) as exc:
        if os.environ.get(CEPH_REQUIRED_ENV) == "1":
            pytest.fail(f"{CEPH_REQUIRED_ENV}=1 but a real Ceph cannot run here: {exc}", pytrace=False)
        pytest.skip(f"no real Ceph on this machine: {exc}")
    return cluster


@pytest.fixture(scope="session")
def openstack(ceph: CephCluster) -> Iterator[OpenStack]:
    """Real Keystone, Cinder (RBD driver on the session's Ceph, fake driver for local SSD)
    and Manila (CephFS driver) on loopback ports, installed from PyPI into a cached venv.
    Skips with the reason where they cannot run, unless BERTH_REQUIRE_OPENSTACK=1."""
    try:
        cloud = OpenStack(ceph)
        cloud.start()
    except (OpenStackUnavailable, OSError) as exc:
        if os.environ.get(OPENSTACK_REQUIRED_ENV) == "1":
            pytest.fail(f"{OPENSTACK_REQUIRED_ENV}=1 but a real OpenStack cannot run here: {exc}", pytrace=False)
        pytest.skip(f"no real OpenStack on this machine: {exc}")
    yield cloud
    cloud.stop()
