"""A real, throw-away OpenStack on loopback for tests: Keystone, Cinder (RBD driver, plus
the fake driver for what Ceph cannot back) and Manila (CephFS driver), against the
session's real Ceph, this machine's PostgreSQL (databases of our own) and RabbitMQ (a
vhost of our own). See `openstack_conf` for which backend stands for which volume type.

Every daemon runs as our child in its own process group (so cinder-volume's per-backend
children go with it), logs under one directory, and is stopped TERM-then-KILL. Names
that are machine-global (databases, vhost) carry our pid: a session that died leaves
them behind, and the next session drops those whose pid is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from berth_testing import openstack_conf as conf
from berth_testing import openstack_host as host
from berth_testing.ceph import CephCluster
from berth_testing.openstack_venv import OpenStackUnavailable, ensure_venv

PG_ENV = "BERTH_OPENSTACK_PG"  # a server URL whose user may CREATE DATABASE
RABBIT_ENV = "BERTH_OPENSTACK_RABBIT"


@dataclass
class _Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class OpenStack:
    """`start()`, then use `keystone_url`, `clouds_file` (clouds `berth` and `admin`),
    `cinder_url`, `manila_url`, `admin()`; `stop()`."""

    ceph: CephCluster
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="berth-os-", dir="/tmp")))
    timings: dict[str, float] = field(default_factory=dict)
    tag: str = field(default_factory=lambda: f"berthos_p{os.getpid()}_{uuid.uuid4().hex[:6]}")
    rbd_secret: str = field(default_factory=lambda: str(uuid.uuid4()))
    _procs: list[_Proc] = field(default_factory=list)
    _admin: Any = None

    def __post_init__(self) -> None:
        pg = os.environ.get(PG_ENV, "postgresql://postgres@127.0.0.1:5432/postgres")
        self.pg = host.Postgres(pg)
        self.pg_host = pg.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1)
        self.rabbit = os.environ.get(RABBIT_ENV, "rabbit://guest:guest@127.0.0.1:5672")
        self.ports = {k: host.free_port() for k in ("keystone", "cinder", "manila")}
        self.keystone_url = f"http://127.0.0.1:{self.ports['keystone']}"
        self.cinder_url = f"http://127.0.0.1:{self.ports['cinder']}/v3"
        self.manila_url = f"http://127.0.0.1:{self.ports['manila']}/v2"
        self.clouds_file = self.base / "clouds.yaml"
        self.vhost = self.tag
        self._created_dbs: list[str] = []
        self._synced: set[str] = set()
        self._vhost_made = False

    def db_url(self, service: str) -> str:
        return f"{self.pg_host}/{self.tag}_{service}"

    @property
    def transport(self) -> str:
        return f"{self.rabbit}/{self.vhost}"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 240.0) -> None:
        t0 = time.monotonic()
        try:
            self.venv = ensure_venv()
            self.timings["venv"] = time.monotonic() - t0
            self._check_imports()
            host.sweep_stale(self.pg)
            self._make_databases()
            self._make_vhost()
            self._prepare_ceph()
            self._write_configs()
            self._bootstrap_and_start()
            self.timings["started"] = time.monotonic() - t0
            self._wait_http(self.keystone_url + "/v3", t0 + timeout)
            self._catalog()
            self.timings["keystone"] = time.monotonic() - t0
            self._types()
            self._wait_pools(t0 + timeout)
            self.timings["ready"] = time.monotonic() - t0
        except BaseException as exc:
            self.stop(keep=True)
            if isinstance(exc, Exception) and not isinstance(exc, OpenStackUnavailable):
                raise OpenStackUnavailable(f"start failed: {type(exc).__name__}: {exc}; logs in {self.base}") from exc
            raise

    def _py(self) -> str:
        return str(self.venv / "bin" / "python")

    def _bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def _check_imports(self) -> None:
        proc = subprocess.run(
            [self._py(), "-c", "import rados, rbd, ceph_argparse, cinder, manila, keystone"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise OpenStackUnavailable(f"the OpenStack venv cannot import its drivers: {proc.stderr.strip()[-400:]}")

    def _make_databases(self) -> None:
        """Each service's database, copied from the template of its synced schema when one
        exists for these pins (saves the three db syncs, about 20-40 s here)."""
        for service in ("keystone", "cinder", "manila"):
            db = f"{self.tag}_{service}"
            try:
                self.pg.run(f'CREATE DATABASE "{db}" TEMPLATE "{host.template_name(service)}"')
                self._synced.add(service)
            except OpenStackUnavailable:
                self.pg.run(f'CREATE DATABASE "{db}"')
            self._created_dbs.append(db)

    def _sync(self, service: str, argv: list[str]) -> None:
        if service in self._synced:
            return
        self._sh(argv)
        # Kept for the next sessions; a concurrent session may have made it first.
        with contextlib.suppress(OpenStackUnavailable):
            self.pg.run(f'CREATE DATABASE "{host.template_name(service)}" TEMPLATE "{self.tag}_{service}"')

    def _make_vhost(self) -> None:
        host.make_vhost(self.vhost)
        self._vhost_made = True

    def _prepare_ceph(self) -> None:
        """Pools and cephx users of the Cinder and Manila drivers on the session's Ceph."""
        from berth_shared.backends import ceph_bindings

        rbd = ceph_bindings.rbd()
        existing = {p["pool_name"] for p in self.ceph.mon_command("osd pool ls", detail="detail") or []}
        for pool in conf.cinder_pools():
            if pool not in existing:
                self.ceph.mon_command("osd pool create", pool=pool, pg_num=8)
                self.ceph.mon_command("osd pool application enable", pool=pool, app="rbd")
                with self.ceph.client().open_ioctx(pool) as ioctx:
                    rbd.RBD().pool_init(ioctx, False)
        # One copy on purpose: the stand-in for the seed's remote one-copy SSD (the other
        # pools have one copy too, because the test Ceph has one OSD).
        self.ceph.mon_command("osd pool set", pool="cinder-remote", var="size", val="1", yes_i_really_mean_it=True)
        keyrings: dict[str, Path] = {}
        users = {b.user for b in conf.RBD_BACKENDS} | {conf.MANILA_USER}
        (self.base / "ceph").mkdir(parents=True, exist_ok=True)
        for user in sorted(users):
            entity = f"client.{user}"
            out = self.ceph.mon_command("auth get-or-create", entity=entity, caps=conf.cephx_caps(user))
            path = self.base / "ceph" / f"ceph.{entity}.keyring"
            path.write_text(f"[{entity}]\n\tkey = {out[0]['key']}\n")
            keyrings[user] = path
        self.ceph_conf = self.base / "ceph" / "ceph.conf"
        self.ceph_conf.write_text(conf.ceph_conf(self.ceph.conf.read_text(), keyrings))

    def _write_configs(self) -> None:
        for sub in ("keystone", "cinder/locks", "manila/locks", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        k = self.base / "keystone"
        (k / "keystone.conf").write_text(conf.keystone_conf(self.db_url("keystone"), k))
        (k / "wsgi_keystone.py").write_text(conf.KEYSTONE_WSGI)
        common = {"venv": self.venv, "transport": self.transport, "keystone": self.keystone_url}
        (self.base / "cinder" / "cinder.conf").write_text(
            conf.cinder_conf(
                base=self.base / "cinder",
                db_url=self.db_url("cinder"),
                port=self.ports["cinder"],
                ceph_conf_path=self.ceph_conf,
                secret=self.rbd_secret,
                **common,  # type: ignore[arg-type]
            )
        )
        (self.base / "manila" / "manila.conf").write_text(
            conf.manila_conf(
                base=self.base / "manila",
                db_url=self.db_url("manila"),
                port=self.ports["manila"],
                ceph_conf_path=self.ceph_conf,
                **common,  # type: ignore[arg-type]
            )
        )
        (self.base / "manila" / "wsgi_manila.py").write_text(conf.MANILA_WSGI)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "PYTHON", "VIRTUAL_ENV"))}
        env.update(
            PATH=f"{self.venv}/bin:{env.get('PATH', '/usr/bin:/bin')}",
            OS_KEYSTONE_CONFIG_DIR=str(self.base / "keystone"),
            OS_KEYSTONE_CONFIG_FILES="keystone.conf",
            BERTH_MANILA_CONF=str(self.base / "manila" / "manila.conf"),
        )
        return env

    def _sh(self, argv: list[str], timeout: float = 180.0) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self._env(), check=False)
        if proc.returncode != 0:
            raise OpenStackUnavailable(f"{' '.join(argv[:3])} failed: {(proc.stderr or proc.stdout).strip()[-600:]}")

    def _bootstrap_and_start(self) -> None:
        """Per service, in parallel: its database sync (Keystone: and bootstrap), then its
        daemons. Keystone's start does not wait for Cinder's schema, nor the reverse."""
        km = [self._bin("keystone-manage"), "--config-file", str(self.base / "keystone" / "keystone.conf")]
        owner = ["--keystone-user", "root", "--keystone-group", "root"]
        url = self.keystone_url + "/v3"
        bootstrap = ["bootstrap", "--bootstrap-password", conf.PASSWORD, "--bootstrap-region-id", "RegionOne"]
        for interface in ("public", "internal", "admin"):
            bootstrap += [f"--bootstrap-{interface}-url", url]
        cinder = ["--config-file", str(self.base / "cinder" / "cinder.conf")]
        manila = ["--config-file", str(self.base / "manila" / "manila.conf")]
        chains: list[tuple[str, list[str], list[list[str]], Callable[[], None]]] = [
            ("keystone", [*km, "db_sync"], [[*km, "fernet_setup", *owner], [*km, *bootstrap]], self._start_keystone),
            ("cinder", [self._bin("cinder-manage"), *cinder, "db", "sync"], [], self._start_cinder),
            ("manila", [self._bin("manila-manage"), *manila, "db", "sync"], [], self._start_manila),
        ]
        errors: list[BaseException] = []

        def run(service: str, sync: list[str], steps: list[list[str]], then: Callable[[], None]) -> None:
            try:
                self._sync(service, sync)
                for argv in steps:
                    self._sh(argv)
                then()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=chain) for chain in chains]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def _spawn(self, name: str, argv: list[str]) -> None:
        p = _Proc(name, argv, self.base / "log" / f"{name}.log", self._env())
        with open(p.log, "ab") as out:
            p.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=p.env, start_new_session=True
            )
        self._procs.append(p)

    def _gunicorn(self, name: str, chdir: Path, port: int, app: str) -> None:
        argv = [self._bin("gunicorn"), "-w", "1", "--threads", "4", "--timeout", "120", "--chdir", str(chdir)]
        self._spawn(name, [*argv, "-b", f"127.0.0.1:{port}", app])

    def _start_keystone(self) -> None:
        self._gunicorn("keystone", self.base / "keystone", self.ports["keystone"], "wsgi_keystone:application")

    def _start_cinder(self) -> None:
        for svc in ("cinder-api", "cinder-scheduler", "cinder-volume"):
            self._spawn(svc, [self._bin(svc), "--config-file", str(self.base / "cinder" / "cinder.conf")])

    def _start_manila(self) -> None:
        m = self.base / "manila"
        self._gunicorn("manila-api", m, self.ports["manila"], "wsgi_manila:application")
        for svc in ("manila-scheduler", "manila-share"):
            self._spawn(svc, [self._bin(svc), "--config-file", str(m / "manila.conf")])

    def _check_alive(self) -> None:
        for p in self._procs:
            if p.proc is not None and p.proc.poll() is not None:
                tail = p.log.read_text(errors="replace").splitlines()[-12:]
                raise OpenStackUnavailable(f"{p.name} exited with {p.proc.returncode}:\n" + "\n".join(tail))

    def _wait(self, what: str, check: Callable[[], bool], deadline: float, every: float = 0.5) -> None:
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if check():
                    return
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(every)
        raise OpenStackUnavailable(f"{what} not ready in time (last: {last!r}); logs in {self.base}/log")

    def _wait_http(self, url: str, deadline: float) -> None:
        import httpx

        self._wait(url, lambda: httpx.get(url, timeout=2).status_code < 500, deadline, 0.25)

    # -- Keystone catalog, accounts and types --------------------------------------------

    def _cloud(self, user: str, project: str) -> dict[str, Any]:
        return {
            "auth": {
                "auth_url": self.keystone_url + "/v3",
                "username": user,
                "password": conf.PASSWORD,
                "project_name": project,
                "user_domain_name": "Default",
                "project_domain_name": "Default",
            },
            "region_name": "RegionOne",
            "identity_api_version": 3,
            "api_timeout": 30,
        }

    def _write_clouds(self) -> None:
        clouds = {"clouds": {"admin": self._cloud("admin", "admin"), "berth": self._cloud("berth", "service")}}
        self.clouds_file.write_text(yaml.safe_dump(clouds))
        self.clouds_file.chmod(0o600)

    def connect(self, cloud: str = "admin") -> Any:
        import openstack.config

        region = openstack.config.OpenStackConfig(config_files=[str(self.clouds_file)]).get_one(cloud=cloud)
        return openstack.connection.Connection(config=region)

    def admin(self) -> Any:
        if self._admin is None:
            self._admin = self.connect("admin")
        return self._admin

    def cinder_config(self, volume_type: str = "ceph-ssd", **extra: Any) -> dict[str, Any]:
        """A Berth storage cluster config for a Cinder type, with Ceph access (the pool) for
        RBD-backed types so that fences blocklist at Ceph."""
        cfg: dict[str, Any] = {"cloud": "berth", "clouds_file": str(self.clouds_file), "volume_type": volume_type}
        spec = next((b for b in conf.RBD_BACKENDS if volume_type.startswith(b.name)), None)
        if spec is not None:
            cfg["ceph"] = self.ceph.backend_config("rbd", pool=spec.pool)
        cfg.update(extra)
        return cfg

    def manila_config(self, **extra: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {"cloud": "berth", "clouds_file": str(self.clouds_file)}
        cfg.update(share_type=conf.MANILA_BACKEND, ceph=self.ceph.backend_config("cephfs"))
        cfg.update(extra)
        return cfg

    def project_user(self, name: str, roles: tuple[str, ...] = ("member",)) -> tuple[str, str]:
        """A project and a user of the same name with `roles` on it, and a cloud of that
        name in `clouds_file`; returns (project id, user id)."""
        idn = self.admin().identity
        project = idn.create_project(name=name, domain_id="default")
        user = idn.create_user(name=name, password=conf.PASSWORD, domain_id="default")
        by_name = {r.name: r for r in idn.roles()}
        for role in roles:
            by_name[role] = by_name.get(role) or idn.create_role(name=role)
            idn.assign_project_role_to_user(project, user, by_name[role])
        clouds = yaml.safe_load(self.clouds_file.read_text())
        clouds["clouds"][name] = self._cloud(name, name)
        self.clouds_file.write_text(yaml.safe_dump(clouds))
        return str(project.id), str(user.id)

    def token(self, cloud: str) -> str:
        """A fresh project-scoped token of that cloud's user."""
        conn = self.connect(cloud)
        try:
            return str(conn.session.get_token())
        finally:
            conn.close()

    def _catalog(self) -> None:
        self._write_clouds()
        idn = self.admin().identity
        service_project = idn.create_project(name="service", domain_id="default")
        roles = {r.name: r for r in idn.roles()}
        roles["service"] = roles.get("service") or idn.create_role(name="service")
        for user in ("cinder", "manila", "berth"):
            u = idn.create_user(name=user, password=conf.PASSWORD, domain_id="default")
            for role in ("admin", "service"):
                idn.assign_project_role_to_user(service_project, u, roles[role])
        region = "RegionOne"
        for stype, name, url in (
            ("block-storage", "cinderv3", f"{self.cinder_url}/%(project_id)s"),
            ("shared-file-system", "manilav2", self.manila_url),
        ):
            svc = idn.create_service(name=name, type=stype)
            for interface in ("public", "internal", "admin"):
                idn.create_endpoint(service_id=svc.id, interface=interface, url=url, region_id=region)
        self._admin = None  # a new connection sees the new catalog

    def _types(self) -> None:
        c = self.admin()
        self._wait_http(self.cinder_url.rsplit("/", 1)[0] + "/", time.monotonic() + 120)
        bs = c.block_storage
        for b in conf.RBD_BACKENDS:
            bs.create_type(name=b.name, extra_specs={"volume_backend_name": b.name})
        bs.create_type(name=conf.FAKE_BACKEND, extra_specs={"volume_backend_name": conf.FAKE_REPORTED_NAME})
        bs.create_type(
            name=conf.MULTIATTACH_TYPE, extra_specs={"volume_backend_name": "ceph-ssd", "multiattach": "<is> True"}
        )
        self._wait_http(self.manila_url.rsplit("/", 1)[0] + "/", time.monotonic() + 120)
        c.shared_file_system.create_share_type(
            name=conf.MANILA_BACKEND,
            extra_specs={
                "driver_handles_share_servers": "False",
                "share_backend_name": conf.MANILA_BACKEND,
                "snapshot_support": "True",
                "create_share_from_snapshot_support": "True",
            },
        )

    def _wait_pools(self, deadline: float) -> None:
        """Until the schedulers see every backend with a capacity (before that, creates fail
        with 'no valid host')."""
        wanted = {b.name for b in conf.RBD_BACKENDS} | {conf.FAKE_REPORTED_NAME}

        def cinder_ready() -> bool:
            pools = self.admin().block_storage.backend_pools()
            seen = {p.capabilities.get("volume_backend_name") for p in pools if p.capabilities}
            return wanted <= seen

        def manila_ready() -> bool:
            return any(True for _ in self.admin().shared_file_system.storage_pools())

        self._wait("cinder pools", cinder_ready, deadline, 1.0)
        self._wait("manila pools", manila_ready, deadline, 1.0)

    # -- stop ----------------------------------------------------------------------------

    def stop(self, keep: bool = False) -> None:
        """SIGKILL at once: the daemons hold nothing worth a clean shutdown (their databases
        and vhost go next), and their graceful stops took 25-30 s here."""
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None
        for p in self._procs:
            if p.proc is not None:
                # The whole group: cinder-volume's per-backend children, gunicorn's workers.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait()
        self._procs.clear()
        for db in self._created_dbs:
            with contextlib.suppress(OpenStackUnavailable):
                self.pg.run(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        self._created_dbs.clear()
        if self._vhost_made:
            with contextlib.suppress(OpenStackUnavailable):
                host.rabbitmqctl("delete_vhost", self.vhost)
            self._vhost_made = False
        if not keep and os.environ.get("BERTH_KEEP_OPENSTACK") != "1":
            shutil.rmtree(self.base, ignore_errors=True)
