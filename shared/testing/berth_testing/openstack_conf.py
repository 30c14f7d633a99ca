"""The configuration files of the test OpenStack (Keystone, Cinder, Manila) and the Ceph
users and pools its drivers use. Pure text and names: `openstack_fixture` writes and runs.

Which backend stands in for which of the seed's types (the test Ceph has one OSD, so
every pool has one copy; "replicated" and "EC" differ here only in layout):

- replicated SSD: Cinder `ceph-ssd`, RBD driver, pool `cinder-ssd`;
- replicated HDD: Cinder `ceph-hdd`, RBD driver, pool `cinder-hdd`;
- EC HDD: Cinder `ceph-ec`, RBD driver, pool `cinder-ec`, data in `cinder-ec-data` through
  its cephx user's `rbd default data pool` (a replicated pool: one OSD cannot hold an EC
  profile);
- remote SSD, one copy (iSCSI in production): Cinder `ceph-remote`, RBD driver, pool
  `cinder-remote` explicitly of size 1;
- local SSD: Cinder `local-ssd`, the fake driver (Ceph cannot back node-local disks; it
  has no data path);
- CephFS shared: Manila `cephfs`, CephFS driver (native protocol) on the `cephfs` file system.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RbdBackendSpec:
    name: str  # Cinder backend and volume type name
    pool: str
    user: str
    data_pool: str | None = None
    multiattach: bool = False


RBD_BACKENDS = (
    RbdBackendSpec("ceph-ssd", "cinder-ssd", "cinder"),
    RbdBackendSpec("ceph-hdd", "cinder-hdd", "cinder"),
    RbdBackendSpec("ceph-ec", "cinder-ec", "cinder-ec", data_pool="cinder-ec-data"),
    RbdBackendSpec("ceph-remote", "cinder-remote", "cinder"),
)
FAKE_BACKEND = "local-ssd"
FAKE_REPORTED_NAME = "fake"  # the fake driver reports this backend name whatever its config says
MULTIATTACH_TYPE = "ceph-ssd-multiattach"  # same backend as ceph-ssd, multiattach="<is> True"
MANILA_BACKEND = "cephfs"
MANILA_USER = "manila"
PASSWORD = "berth-test-secret"  # every test account's password: loopback only, thrown away


def cinder_pools() -> list[str]:
    pools = {b.pool for b in RBD_BACKENDS} | {b.data_pool for b in RBD_BACKENDS if b.data_pool}
    return sorted(pools)


def cephx_caps(user: str) -> list[str]:
    if user == MANILA_USER:
        # What Manila's CephFS driver documents for its own id (it creates the share ids).
        return [
            "mds",
            "allow *",
            "osd",
            "allow rw",
            "mgr",
            "allow rw",
            "mon",
            'allow r, allow command "auth del", allow command "auth caps", allow command "auth get", '
            'allow command "auth get-or-create"',
        ]
    osd = ", ".join(f"profile rbd pool={p}" for p in cinder_pools())
    return ["mon", "profile rbd", "osd", osd, "mgr", "profile rbd"]


def ceph_conf(base_conf: str, keyrings: dict[str, Path]) -> str:
    """The fixture's ceph.conf plus one section per OpenStack cephx user (its keyring; the
    EC user's default data pool, which is how an RBD driver gets an EC data pool)."""
    sections = [base_conf.rstrip(), ""]
    for user, keyring in keyrings.items():
        sections.append(f"[client.{user}]\nkeyring = {keyring}")
        spec = next((b for b in RBD_BACKENDS if b.user == user and b.data_pool), None)
        if spec:
            sections.append(f"rbd default data pool = {spec.data_pool}")
    return "\n".join(sections) + "\n"


def keystone_conf(db_url: str, base: Path) -> str:
    return f"""[DEFAULT]
debug = false
[database]
connection = {db_url}
[token]
provider = fernet
expiration = 3600
[fernet_tokens]
key_repository = {base}/fernet-keys
[credential]
key_repository = {base}/credential-keys
[cache]
enabled = false
[identity]
# Test accounts only: bcrypt's minimum cost (the default, 12, costs ~0.3-1 s per password
# check here, and every token issued checks one).
password_hash_rounds = 4
"""


def _authtoken(keystone: str, user: str) -> str:
    return f"""[keystone_authtoken]
www_authenticate_uri = {keystone}/v3
auth_url = {keystone}/v3
auth_type = password
username = {user}
password = {PASSWORD}
project_name = service
user_domain_name = Default
project_domain_name = Default
service_token_roles_required = true
"""


def cinder_conf(
    *, venv: Path, base: Path, db_url: str, transport: str, keystone: str, port: int, ceph_conf_path: Path, secret: str
) -> str:
    backends = [b.name for b in RBD_BACKENDS] + [FAKE_BACKEND]
    rbd = "".join(
        f"""[{b.name}]
volume_driver = cinder.volume.drivers.rbd.RBDDriver
volume_backend_name = {b.name}
rbd_pool = {b.pool}
rbd_ceph_conf = {ceph_conf_path}
rbd_user = {b.user}
rbd_secret_uuid = {secret}
rbd_flatten_volume_from_snapshot = false
rbd_exclusive_cinder_pool = true
report_discard_supported = true
"""
        for b in RBD_BACKENDS
    )
    return f"""[DEFAULT]
transport_url = {transport}
auth_strategy = keystone
api_paste_config = {venv}/etc/cinder/api-paste.ini
resource_query_filters_file = {venv}/etc/cinder/resource_filters.json
rootwrap_config = {venv}/etc/cinder/rootwrap.conf
state_path = {base}
my_ip = 127.0.0.1
host = berth-os
osapi_volume_listen = 127.0.0.1
osapi_volume_listen_port = {port}
osapi_volume_workers = 1
enabled_backends = {",".join(backends)}
glance_api_servers = http://127.0.0.1:9
# Berth keeps its own quotas; the tests also create more than the default 10 volumes.
quota_volumes = -1
quota_snapshots = -1
quota_gigabytes = -1
use_default_quota_class = false
periodic_interval = 5
report_interval = 5
scheduler_driver_init_wait_time = 1
debug = false
[database]
connection = {db_url}
{_authtoken(keystone, "cinder")}
[oslo_concurrency]
lock_path = {base}/locks
[coordination]
backend_url = file://{base}/coord
[oslo_messaging_notifications]
driver = noop
{rbd}[{FAKE_BACKEND}]
volume_driver = cinder.tests.fake_driver.FakeLoggingVolumeDriver
volume_backend_name = {FAKE_BACKEND}
"""


def manila_conf(
    *, venv: Path, base: Path, db_url: str, transport: str, keystone: str, port: int, ceph_conf_path: Path
) -> str:
    return f"""[DEFAULT]
transport_url = {transport}
auth_strategy = keystone
api_paste_config = {venv}/etc/manila/api-paste.ini
rootwrap_config = {venv}/etc/manila/rootwrap.conf
state_path = {base}
my_ip = 127.0.0.1
host = berth-os
osapi_share_listen = 127.0.0.1
osapi_share_listen_port = {port}
osapi_share_workers = 1
enabled_share_backends = {MANILA_BACKEND}
enabled_share_protocols = CEPHFS
default_share_type = {MANILA_BACKEND}
periodic_interval = 5
report_interval = 5
debug = false
[database]
connection = {db_url}
{_authtoken(keystone, "manila")}
[oslo_concurrency]
lock_path = {base}/locks
[oslo_messaging_notifications]
driver = noop
[{MANILA_BACKEND}]
driver_handles_share_servers = False
share_backend_name = {MANILA_BACKEND}
share_driver = manila.share.drivers.cephfs.driver.CephFSDriver
cephfs_conf_path = {ceph_conf_path}
cephfs_protocol_helper_type = CEPHFS
cephfs_auth_id = {MANILA_USER}
cephfs_cluster_name = ceph
cephfs_filesystem_name = cephfs
cephfs_cached_allocated_capacity_update_interval = 5
"""


# gunicorn's argv must not reach oslo.config (it parses sys.argv: workers exit 2).
KEYSTONE_WSGI = """import os, sys
sys.argv = sys.argv[:1]
from keystone.wsgi.api import application  # noqa: E402,F401
"""
MANILA_WSGI = """import os, sys
sys.argv = [sys.argv[0], "--config-file", os.environ["BERTH_MANILA_CONF"]]
from manila.wsgi.api import application  # noqa: E402,F401
"""
