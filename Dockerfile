# syntax=docker/dockerfile:1
# Every Berth image comes from this one file; the build argument SERVICE picks which:
#
#   docker build --build-arg SERVICE=provisioner -t berth-provisioner:0.1.0 .
#   (provisioner, attacher, watcher, alerts, csi; the build context is the repository root)
#
# Libraries are pinned by the lock, deploy/constraints.txt (scripts/lock.sh writes it), so an
# image built today and one built next month hold the same versions.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtualenv with the service and berth_shared, nothing else ----------------------
FROM ${PYTHON_IMAGE} AS build
ARG SERVICE
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN case "${SERVICE}" in provisioner|attacher|watcher|alerts|csi) ;; \
      *) echo "build with --build-arg SERVICE=provisioner|attacher|watcher|alerts|csi (got '${SERVICE}')" >&2; exit 1 ;; \
    esac
RUN python -m venv /opt/berth
COPY deploy/constraints.txt /src/deploy/constraints.txt
# The shared library first: it changes less often than a service, so its layer is reused.
COPY shared/pyproject.toml /src/shared/pyproject.toml
COPY shared/berth_shared /src/shared/berth_shared
RUN /opt/berth/bin/pip install -c /src/deploy/constraints.txt /src/shared
COPY services/${SERVICE}/pyproject.toml /src/services/${SERVICE}/pyproject.toml
COPY services/${SERVICE}/berth_${SERVICE} /src/services/${SERVICE}/berth_${SERVICE}
RUN /opt/berth/bin/pip install -c /src/deploy/constraints.txt /src/services/${SERVICE} \
    && ln -s berth-${SERVICE} /opt/berth/bin/berth-service

# -- runtime: the virtualenv, the OS packages the service calls, an unprivileged user ---------
FROM ${PYTHON_IMAGE}
ARG SERVICE
# OS packages by service (Debian bookworm's, matching this Python 3.11):
# - provisioner, attacher, watcher: Ceph's Python bindings (RBD and CephFS clusters; Ceph
#   ships them as OS packages, not wheels);
# - csi: the node side's tools: loop devices, mount, mkfs/grow for ext4 and xfs, and the
#   FUSE clients that stage RBD (rbd-fuse) and CephFS (ceph-fuse) volumes;
# - alerts: none.
RUN set -eu; \
    ceph="python3-rados python3-rbd python3-cephfs"; \
    case "${SERVICE}" in \
      alerts) pkgs="" ;; \
      csi) pkgs="util-linux mount e2fsprogs xfsprogs fuse3 rbd-fuse ceph-fuse ${ceph}" ;; \
      *) pkgs="${ceph}" ;; \
    esac; \
    if [ -n "${pkgs}" ]; then \
      apt-get update; apt-get install -y --no-install-recommends ${pkgs}; rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --system --uid 10001 --user-group --home-dir /var/lib/berth --no-create-home berth; \
    # Where volumes mount, owned by the service's user: a new named volume takes the owner
    # of the image's directory (compose's init job writes the last two for Grafana and
    # Prometheus).
    dirs="/var/lib/berth /var/lib/berth-tokens /var/lib/berth-nats /var/lib/berth-dashboards /var/lib/berth-prometheus"; \
    mkdir -p ${dirs}; chown berth:berth ${dirs}
COPY --from=build /opt/berth /opt/berth
ENV PATH=/opt/berth/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BERTH_DATA_DIR=/var/lib/berth \
    BERTH_HTTP_HOST=0.0.0.0
# Unprivileged by default, every service. The CSI *node* plugin alone runs as root, privileged,
# from its DaemonSet (deploy/k8s/base/csi/node.yaml says why); its controller needs nothing.
USER 10001
WORKDIR /var/lib/berth
# Settings are BERTH_* environment variables (shared/berth_shared/settings.py); the HTTP port
# defaults to the service's own (8701-8704).
CMD ["berth-service"]
