"""What every benchmark shares: machine facts, result files, child processes, payloads."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

# The code that runs lives next to this file: in the checkout, or in the snapshot that
# ``python -m benchmarks`` takes (see __main__). Results and the README always go to the
# checkout, named by SNAPSHOT_ENV when running from a snapshot.
SNAPSHOT_ENV = "POLLER_BENCH_CHECKOUT"
SOURCE_ENV = "POLLER_BENCH_SOURCE"
CODE_ROOT = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get(SNAPSHOT_ENV) or CODE_ROOT)
RESULTS_DIR = ROOT / "benchmarks" / "results"
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"
README = ROOT / "README.md"

PACKAGES = ("poller", "aiohttp", "msgspec", "orjson", "httpx", "pydantic", "uvloop", "matplotlib")
API_KEY = "rt_test_bench"
ORG_ID = "org_bench"

# The example response of the API reference, byte for byte (as in tests/test_models.py).
REFERENCE_PAYLOAD = b"""{
  "id": "job_V1StGXR8_Z5jdHi6B-myT",
  "object": "job",
  "status": "in_progress",
  "endpoint": "/v1/documents/extract",
  "error": null,
  "created_at": 1705420800,
  "started_at": 1705420802,
  "completed_at": null,
  "expires_at": 1706025600,
  "organization_id": "org_abc123",
  "metadata": {"batch_id": "batch_001"}
}"""

# A failed job with every optional field the API documents filled in.
FAILED_PAYLOAD = (
    b'{"id":"job_V1StGXR8_Z5jdHi6B-myT","object":"job","status":"failed",'
    b'"endpoint":"/v1/documents/extract",'
    b'"error":{"code":"document_unreadable","message":"The document could not be parsed: '
    b'page 3 is encrypted.","details":{"page":3,"retryable":false}},'
    b'"warnings":[{"code":"dispatch_delayed","message":"Dispatch was delayed by 12 s",'
    b'"details":null}],'
    b'"created_at":1705420800,"started_at":1705420802,"completed_at":1705420861,'
    b'"expires_at":1706025600,"organization_id":"org_abc123",'
    b'"metadata":{"batch_id":"batch_001","customer":"acme","priority":"high"},'
    b'"cloud_task_name":"projects/retab/locations/eu/queues/extract/tasks/8731",'
    b'"cancelled":false,"attempt_count":2,"last_attempt_at":1705420840,'
    b'"last_failure_code":"worker_lost"}'
)

# The body the canned servers return (``{job_id}`` and ``{status}`` filled in per request).
CANNED_TEMPLATE = (
    '{{"id":"{job_id}","object":"job","status":"{status}",'
    '"endpoint":"/v1/documents/extract","error":null,"created_at":1705420800,'
    '"started_at":1705420802,"completed_at":null,"expires_at":4102444800,'
    '"organization_id":"' + ORG_ID + '","metadata":{{"batch_id":"batch_001"}}}}'
)


def canned_payload(job_id: str, status: str = "in_progress") -> bytes:
    """The canned status body for ``job_id`` (``expires_at`` is in 2100: never expires)."""
    return CANNED_TEMPLATE.format(job_id=job_id, status=status).encode()


def job_ids(n: int) -> list[str]:
    """``n`` distinct job IDs as long as real ones (25 characters)."""
    return [f"job_{i:021d}" for i in range(n)]


# -- machine facts -----------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return None


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def tree_digest(package: Path) -> str:
    """A hash of a package's Python sources: names exactly the code measured, committed
    or not."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def source_state() -> dict[str, Any]:
    """The code measured: the commit, whether ``poller/`` differed from it, and a hash of
    ``poller/``'s sources. Under a snapshot, the state when it was taken."""
    if os.environ.get(SOURCE_ENV):
        state: dict[str, Any] = json.loads(os.environ[SOURCE_ENV])
        return state

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    changed = git("status", "--porcelain", "--", "poller")
    return {
        "commit": commit,
        "poller_modified": bool(changed) if changed is not None else None,
        "poller_sha256": tree_digest(CODE_ROOT / "poller"),
    }


def machine() -> dict[str, Any]:
    """The facts a reader needs to weigh a figure: CPU, cores, Python, versions, date."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_total_gib(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "source": source_state(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


# -- results -----------------------------------------------------------------------


def goal(goal: str, target: str, measured: str, met: bool) -> dict[str, Any]:
    """One line of the README's goal table."""
    return {"goal": goal, "target": target, "measured": measured, "met": bool(met)}


def write_result(result: dict[str, Any], results_dir: Path) -> Path:
    """Write ``<results_dir>/<name>.json`` atomically (a temp file, then a rename)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{result['name']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of already sorted values, nearest-rank."""
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return math.nan
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# -- child processes -----------------------------------------------------------------


PRIORITY_NICE = -10


def raise_priority() -> bool:
    """Lower this process's nice value (root only): on a shared machine, background
    processes then take much less of the measured core. False where not allowed."""
    try:
        os.nice(PRIORITY_NICE - os.nice(0))
    except (AttributeError, OSError):
        return False
    return True


def pin_to_core(core: int | None) -> bool:
    """Pin this process to one core (and raise its priority); False where the machine
    does not allow pinning."""
    if core is None:
        return False
    raise_priority()
    try:
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError, ValueError):
        return False
    return True


def core_plan() -> tuple[int | None, int | None]:
    """(client core, server core): two distinct usable cores, or (None, None)."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(cores) < 2:
        return None, None
    return cores[0], cores[1]


class ChildError(RuntimeError):
    """A benchmark child process failed or timed out."""


def run_child(module: str, spec: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
    """Run ``python -m <module> --child <spec>`` in a fresh interpreter and return the
    JSON object it prints last. Fresh processes keep one measurement from warming or
    fragmenting the heap of the next."""
    return run_children(module, [spec], timeout_s=timeout_s)[0]


def run_children(
    module: str, specs: Sequence[dict[str, Any]], *, timeout_s: float
) -> list[dict[str, Any]]:
    """:func:`run_child` for several specs at once, each in its own process, all running
    at the same time; their results in the order of ``specs``."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, "--child", json.dumps(spec)],
            cwd=CODE_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for spec in specs
    ]
    deadline = time.monotonic() + timeout_s
    outputs: list[tuple[str, str]] = []
    try:
        for spec, proc in zip(specs, procs, strict=True):
            try:
                out, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as exc:
                raise ChildError(f"{module} {spec} timed out after {timeout_s:g} s") from exc
            if proc.returncode != 0:
                raise ChildError(
                    f"{module} {spec} exited {proc.returncode}:\n{err[-4000:]}{out[-2000:]}"
                )
            outputs.append((out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = []
    for spec, (out, err) in zip(specs, outputs, strict=True):
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise ChildError(f"{module} {spec} printed no result:\n{err[-4000:]}")
        results.append(json.loads(lines[-1]))
    return results


def module_main(name: str, child: Callable[[dict[str, Any]], dict[str, Any]] | None) -> None:
    """Entry point of ``python -m benchmarks.<module>``: ``--child SPEC`` runs one
    measurement for a parent; anything else runs the benchmark alone (see __main__)."""
    if len(sys.argv) >= 3 and sys.argv[1] == "--child" and child is not None:
        result = child(json.loads(sys.argv[2]))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        return
    from .__main__ import main

    sys.exit(main([name, *sys.argv[1:]]))


def log(message: str) -> None:
    """Progress on stderr, so stdout stays machine-readable."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)
