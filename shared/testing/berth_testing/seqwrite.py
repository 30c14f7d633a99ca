"""Sequence-numbered writers and the reader that judges them: did any write of the old
node land after the new node's first write, and did every acknowledged write survive?

A writer is a workload process (`python -m berth_testing.seqwrite DIR NODE LOG`): it keeps
one file open on the volume (`DIR/seq-<NODE>.log`) and appends a record
`<node> <seq> <issued_ns>` every `--every` seconds, each followed by fsync; it logs every
attempt to LOG (outside the volume): `ok <seq> <issued_ns> <acked_ns>` or
`err <seq> <issued_ns> <failed_ns> <errno>`. It goes on after errors (a fenced node's
workload keeps trying) until SIGTERM. Times are `time.time_ns()` on one host, so the old
and the new node's records compare directly.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Attempt:
    seq: int
    issued_ns: int
    done_ns: int
    errno: int  # 0: written and fsynced


@dataclass
class WriterLog:
    node: str
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def acked(self) -> list[Attempt]:
        return [a for a in self.attempts if a.errno == 0]

    @property
    def failed(self) -> list[Attempt]:
        return [a for a in self.attempts if a.errno != 0]

    def first_ack_ns(self) -> int | None:
        return min((a.done_ns for a in self.acked), default=None)

    def last_ack_ns(self) -> int | None:
        return max((a.done_ns for a in self.acked), default=None)


def parse_log(node: str, text: str) -> WriterLog:
    log = WriterLog(node)
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "ok":
            log.attempts.append(Attempt(int(parts[1]), int(parts[2]), int(parts[3]), 0))
        elif len(parts) == 5 and parts[0] == "err":
            log.attempts.append(Attempt(int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4])))
    return log


def records_file(directory: Path | str, node: str) -> Path:
    return Path(directory) / f"seq-{node}.log"


def read_records(directory: Path | str, node: str) -> list[tuple[int, int]]:
    """(seq, issued_ns) of every complete record of `node` on the volume (a torn last line,
    from a write cut short, is not a record)."""
    try:
        data = records_file(directory, node).read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n")[:-1]:
        parts = line.split()
        if len(parts) == 3 and parts[0].decode(errors="replace") == node:
            out.append((int(parts[1]), int(parts[2])))
    return out


def judge(
    old: WriterLog,
    old_records: list[tuple[int, int]],
    new: WriterLog,
    new_records: list[tuple[int, int]],
    fenced_ns: int,
) -> list[str]:
    """What went wrong, in words (empty: nothing). `fenced_ns`: when the fence of the old
    node completed. The rules:

    - the old node acknowledged no write after its fence, nor after the new node's first;
    - no record of the old node on the volume was issued after the fence (a write the old
      node started later must not land), and none after the new node's first write;
    - every acknowledged write of either node is on the volume (fsync means durable), and
      the old node's records are no more than its acknowledged ones plus the one in flight;
    - the new node wrote at all.
    """
    wrong: list[str] = []
    first_new = new.first_ack_ns()
    if first_new is None:
        return [f"{new.node} never wrote"]
    for a in old.acked:
        if a.done_ns >= fenced_ns:
            wrong.append(
                f"{old.node} write {a.seq} acknowledged {(a.done_ns - fenced_ns) / 1e6:.1f} ms after its fence"
            )
        if a.done_ns >= first_new:
            wrong.append(f"{old.node} write {a.seq} acknowledged after {new.node}'s first write")
    first_new_issued = min(a.issued_ns for a in new.acked)
    for seq, issued in old_records:
        if issued >= fenced_ns:
            wrong.append(f"{old.node} record {seq} on the volume was issued after the fence")
        if issued >= first_new_issued:
            wrong.append(f"{old.node} record {seq} on the volume was issued after {new.node}'s first write")
    for log, records in ((old, old_records), (new, new_records)):
        on_volume = {seq for seq, _ in records}
        lost = [a.seq for a in log.acked if a.seq not in on_volume]
        if lost:
            wrong.append(f"{log.node}: acknowledged writes missing on the volume: {lost[:10]}")
        top = max((a.seq for a in log.acked), default=0)
        extra = sorted(s for s in on_volume if s > top + 1)
        if extra:
            wrong.append(f"{log.node}: records never attempted before its last acknowledged write: {extra[:10]}")
    return wrong


class Writer:
    """One writer process, started on a mounted volume directory."""

    def __init__(self, directory: Path | str, node: str, log: Path, every_s: float = 0.01) -> None:
        self.directory, self.node, self.log, self.every_s = Path(directory), node, log, every_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Writer:
        argv = [sys.executable, "-m", "berth_testing.seqwrite", str(self.directory), self.node, str(self.log)]
        self.proc = subprocess.Popen([*argv, "--every", str(self.every_s)], start_new_session=True)
        return self

    def read(self) -> WriterLog:
        try:
            return parse_log(self.node, self.log.read_text())
        except FileNotFoundError:
            return WriterLog(self.node)

    def stop(self, timeout: float = 10.0) -> WriterLog:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:  # stuck in the kernel on a dead device: leave it
                self.proc.kill()
        return self.read()


def _write_loop(directory: Path, node: str, log_path: Path, every_s: float) -> int:
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    fd = os.open(records_file(directory, node), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    seq = 0
    with open(log_path, "a", buffering=1) as log:
        while not stopping:
            seq += 1
            issued = time.time_ns()
            try:
                os.write(fd, f"{node} {seq} {issued}\n".encode())
                os.fsync(fd)
                log.write(f"ok {seq} {issued} {time.time_ns()}\n")
            except OSError as exc:
                log.write(f"err {seq} {issued} {time.time_ns()} {exc.errno or errno.EIO}\n")
            time.sleep(every_s)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="append fsynced, sequence-numbered records to a volume")
    parser.add_argument("directory", type=Path)
    parser.add_argument("node")
    parser.add_argument("log", type=Path)
    parser.add_argument("--every", type=float, default=0.01)
    args = parser.parse_args(argv)
    return _write_loop(args.directory, args.node, args.log, args.every)


if __name__ == "__main__":
    sys.exit(main())
