"""The processes a benchmark runs against: each its own interpreter, like in production."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.dev.emulator import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Process:
    """A server on loopback, started with `args`, stopped by its process group."""

    name: str
    port: int
    popen: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls, name: str, args: list[str], env: dict[str, str], ready_path: str, log: Path
    ) -> Process:
        port = free_port()
        environment = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "LOG_FORMAT": "json",
            **env,
        }
        with open(log, "ab") as output:
            popen = subprocess.Popen(
                [sys.executable, *[a.replace("{port}", str(port)) for a in args]],
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )
        process = cls(name, port, popen)
        deadline = time.monotonic() + 60
        while True:
            if popen.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
                raise RuntimeError(f"{name} exited:\n{tail}")
            try:
                if httpx.get(process.url + ready_path, timeout=2).status_code < 500:
                    return process
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: see {log}")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the process and its children (workers)."""
        ticks = os.sysconf("SC_CLK_TCK")
        used = 0
        for pid in self._tree():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:  # gone meanwhile
                continue
            used += int(stat[11]) + int(stat[12])
        return used / ticks

    def _tree(self) -> list[int]:
        pids, index = [self.popen.pid], 0
        while index < len(pids):
            pid = pids[index]
            with contextlib.suppress(FileNotFoundError):
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
                pids += [int(child) for child in children.split()]
            index += 1
        return pids

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
