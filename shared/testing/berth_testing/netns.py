"""Real network partitions for tests: a bridge in the root network namespace and one
network namespace per node, joined to it by a veth pair; nftables rules inside a node's
namespace cut it off from one service (a TCP port on the bridge) or from everything.

Only the network is separate: processes are put into a node's namespace with
`nsenter --net`, so they share the host's mount namespace (the file backend's storage is
this host, and the fence reaches the node's mounts as it would on that host).

Needs root, iproute2 and nftables; `netns_skip_reason()` says why not, and installs
nftables from Debian's packages when only it is missing (as the Ceph fixture does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field

from berth_testing.host import apt_install

TABLE = "berth_partition"


def netns_skip_reason() -> str | None:
    """Why network-namespace partition tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root: it makes network namespaces, veth links and nftables rules"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"needs {tool} (iproute2 / util-linux)"
    if shutil.which("nft") is None:
        why = apt_install(["nftables"])
        if why or shutil.which("nft") is None:
            return f"needs nft (nftables): {why or 'not found after installing nftables'}"
    probe = f"bprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


def _nft(netns: str, ruleset: str) -> None:
    argv = ["ip", "netns", "exec", netns, "nft", "-f", "-"]
    done = subprocess.run(argv, input=ruleset, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"nft in {netns} failed: {done.stderr.strip()}\n{ruleset}")


@dataclass
class NetNode:
    """One node's network namespace, at `address` on the lab's bridge."""

    name: str  # the namespace
    address: str
    gateway: str  # the bridge's address: where the lab's services listen
    cut_state: str | None = None  # None, "port <n>" or "all"

    def argv(self, cmd: list[str]) -> list[str]:
        """`cmd` run inside this node's network namespace (the host's mounts stay shared)."""
        return ["nsenter", f"--net=/run/netns/{self.name}", "--", *cmd]

    def cut(self, port: int | None = None) -> None:
        """Drop every packet between this node and the bridge's `port` (TCP, both ways:
        an established connection hangs, as behind a failed switch), or, with no port,
        every packet but loopback. Replaces an earlier cut."""
        if port is None:
            rules = 'oifname != "lo" drop', 'iifname != "lo" drop'
        else:
            rules = (
                f"ip daddr {self.gateway} tcp dport {port} drop",
                f"ip saddr {self.gateway} tcp sport {port} drop",
            )
        self.heal()
        _nft(
            self.name,
            f"table inet {TABLE} {{\n"
            f"  chain out {{ type filter hook output priority 0; policy accept; {rules[0]}; }}\n"
            f"  chain in {{ type filter hook input priority 0; policy accept; {rules[1]}; }}\n"
            "}\n",
        )
        self.cut_state = "all" if port is None else f"port {port}"

    def heal(self) -> None:
        """Remove the cut (nothing to do when there is none)."""
        if self.cut_state is not None:
            _nft(self.name, f"delete table inet {TABLE}\n")
            self.cut_state = None

    def reaches(self, host: str, port: int, timeout_s: float = 2.0) -> bool:
        """Whether a TCP connection from inside this namespace to `host:port` succeeds now
        (a fresh connection: what a client reconnecting to that service would get)."""
        probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout={timeout_s}).close()"
        argv = self.argv([sys.executable, "-c", probe])
        return subprocess.run(argv, capture_output=True, timeout=timeout_s + 10, check=False).returncode == 0


@dataclass
class Lab:
    """A bridge at <prefix>.1/24 in the root namespace and nodes at <prefix>.2, .3, ...;
    services for the nodes listen on `gateway`. Names are unique per lab (interface
    names have at most 15 characters), so labs of concurrent tests do not collide."""

    prefix: str = field(default_factory=lambda: f"10.{200 + os.getpid() % 50}.{uuid.uuid4().int % 250 + 1}")
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    nodes: list[NetNode] = field(default_factory=list)
    _up: bool = False
    _made: int = 0  # nodes ever added: addresses and names are never reused

    @property
    def bridge(self) -> str:
        return f"bbr{self.tag}"

    @property
    def gateway(self) -> str:
        return f"{self.prefix}.1"

    def up(self) -> Lab:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._up = True
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add_node(self) -> NetNode:
        self._made += 1
        index = self._made + 1
        if index > 254:
            raise RuntimeError(f"lab {self.prefix}.0/24 has no address left")
        name = f"bns{self.tag}{index}"
        node = NetNode(name, f"{self.prefix}.{index}", self.gateway)
        _ip("netns", "add", name)
        self.nodes.append(node)
        outside, inside = f"bve{self.tag}{index}", f"bvi{self.tag}{index}"
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", name)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        _ip("addr", "add", f"{node.address}/24", "dev", inside, netns=name)
        _ip("link", "set", inside, "up", netns=name)
        _ip("link", "set", "lo", "up", netns=name)
        return node

    def remove(self, node: NetNode) -> None:
        """Remove one node's namespace (its veth pair goes with it): labs shared by several
        tests (a Ceph cluster listening on the bridge) give each test nodes of its own."""
        subprocess.run(["ip", "netns", "del", node.name], capture_output=True, check=False)
        if node in self.nodes:
            self.nodes.remove(node)

    def down(self) -> None:
        """Remove the namespaces (their veth ends go with them) and the bridge."""
        for node in list(self.nodes):
            self.remove(node)
        if self._up:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
            self._up = False
