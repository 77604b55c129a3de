"""The canned status server the load benchmarks poll: nginx on 127.0.0.1, pinned to its
own core so that it is never the bottleneck.

nginx is installed from Debian's packages when missing (``apt-get update`` then
``apt-get install -y nginx``). It runs from a config written to a temp dir, in the
foreground as our child process, and is stopped on exit, even on error. Where it
cannot be installed or started, an aiohttp.web server in a separate process stands
in, and the result says so.

Every response is ``200`` with a status payload whose ``id`` is the requested job ID
(the transport refuses a payload for another job). ``mode="steady"`` always answers
``in_progress``; ``mode="alternating"`` answers ``queued`` or ``in_progress`` at random
per request, so about half of all polls are transitions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._common import CANNED_TEMPLATE, CODE_ROOT, log, raise_priority

_NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx")


@dataclass
class Server:
    """A running canned server."""

    base_url: str
    kind: str  # "nginx" or "aiohttp.web (fallback)"
    pid: int
    core: int | None
    facts: dict[str, Any] = field(default_factory=dict)

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and its children (workers)."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in [self.pid, *_children(self.pid)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
        return total


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_nginx() -> str | None:
    for candidate in _NGINX_CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    return None


def ensure_nginx() -> tuple[str | None, str]:
    """nginx's path, installing it from Debian's packages when missing; (None, why) when
    it cannot be had."""
    path = find_nginx()
    if path:
        return path, "present"
    if shutil.which("apt-get") is None:
        return None, "nginx is missing and there is no apt-get"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return None, "nginx is missing and installing it needs root"
    log("nginx is missing: apt-get update && apt-get install -y nginx")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "nginx"]):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{' '.join(cmd)} failed: {exc}"
        if proc.returncode != 0:
            return None, f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-300:]}"
    path = find_nginx()
    return (path, "installed by the benchmark") if path else (None, "nginx not found after install")


def _nginx_body(mode: str) -> str:
    # nginx string literal: the JSON template with nginx variables in place of the fields.
    status = "$bench_status" if mode == "alternating" else "in_progress"
    return CANNED_TEMPLATE.format(job_id="$job_id", status=status)


def nginx_config(workdir: Path, port: int, mode: str) -> str:
    """A minimal config: one worker, keep-alive without limit, no logs, one location."""
    return f"""\
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    server_tokens off;
    # Random per request (no regex, so the location's capture is never overwritten).
    split_clients "$request_id" $bench_status {{ 50% queued; * in_progress; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location ~ ^/v1/jobs/(?<job_id>[^/?]+)/status$ {{
            default_type application/json;
            return 200 '{_nginx_body(mode)}';
        }}
        location / {{ return 404; }}
    }}
}}
"""


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server not ready after {timeout_s:g} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        # nginx: SIGQUIT is a graceful stop of master and workers; then make sure.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _pin(core: int | None) -> Any:
    if core is None:
        return None

    def pin() -> None:
        raise_priority()
        os.sched_setaffinity(0, {core})

    return pin


@contextlib.contextmanager
def canned_server(mode: str = "steady", core: int | None = None) -> Iterator[Server]:
    """Run the canned server (nginx if it can be had) for the duration of the block."""
    nginx, why = ensure_nginx()
    with tempfile.TemporaryDirectory(prefix="poller-bench-") as tmp:
        workdir = Path(tmp)
        if nginx is not None:
            port = free_port()
            conf = workdir / "nginx.conf"
            conf.write_text(nginx_config(workdir, port, mode))
            proc = subprocess.Popen(
                [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=_pin(core),  # affinity and priority only, before exec
            )
            try:
                base_url = f"http://127.0.0.1:{port}"
                try:
                    _wait_ready(f"{base_url}/v1/jobs/job_ready/status", proc)
                except RuntimeError as exc:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    why = f"nginx did not start ({exc}): {err[-300:]}"
                    log(why)
                else:
                    version = subprocess.run(
                        [nginx, "-v"], capture_output=True, text=True, check=False
                    ).stderr.strip()
                    yield Server(
                        base_url,
                        "nginx",
                        proc.pid,
                        core,
                        {"nginx": version, "nginx_source": why, "worker_processes": 1},
                    )
                    return
            finally:
                _stop(proc)
        yield from _fallback(mode, core, why)


def _fallback(mode: str, core: int | None, why: str) -> Iterator[Server]:
    port = free_port()
    log(f"falling back to an aiohttp.web canned server: {why}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._canned_web", str(port), mode],
        cwd=CODE_ROOT,
        preexec_fn=_pin(core),  # affinity and priority only, before exec
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_ready(f"{base_url}/v1/jobs/job_ready/status", proc)
        yield Server(base_url, "aiohttp.web (fallback)", proc.pid, core, {"why_not_nginx": why})
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
