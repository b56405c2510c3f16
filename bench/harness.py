"""Measurement plumbing: run one variant as a child process and measure it; drive a sandbox living in its own process.

Why child processes: a variant's CPU seconds and peak RSS must be its own, not the harness's nor the sandbox's.
`os.wait4` returns the exact rusage of that one child (user + system CPU, ru_maxrss including any processes it
waited for), and a sampler thread records the RSS of the child's process tree over time so "memory stays flat"
is shown, not assumed. The sandbox runs in a separate process for the same reason: its CPU is reported apart.
The machine has 2 cores, so the sandbox and the variant under test compete for them; the tables say so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@dataclass
class ChildRun:
    """What one measured child process cost."""

    argv: list[str]
    returncode: int
    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    peak_rss_mb: float                      # ru_maxrss of the child (the largest single process in its tree)
    peak_tree_rss_mb: float                 # max over samples of the summed PSS of the child's process tree
    rss_samples: list[tuple[float, float]]  # (seconds since start, tree PSS MB)
    payload: dict[str, Any] = field(default_factory=dict)   # what the child wrote to its result file
    log: str = ""

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_sys_s

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpu_s"] = round(self.cpu_s, 3)
        d["rss_samples"] = downsample(self.rss_samples, 60)
        d.pop("log", None)
        return d


def downsample(samples: list[tuple[float, float]], n: int) -> list[tuple[float, float]]:
    if len(samples) <= n:
        return [(round(t, 2), round(m, 1)) for t, m in samples]
    step = len(samples) / n
    picked = [samples[int(i * step)] for i in range(n)] + [samples[-1]]
    return [(round(t, 2), round(m, 1)) for t, m in picked]


def _tree_rss(proc: psutil.Process) -> float:
    """Memory of the child's whole process tree: the sum of PSS (each shared page counted once, split between the
    processes sharing it), so forked worker processes sharing their parent's pages are not counted twice as a sum of
    RSS would; RSS where PSS is not available."""
    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.Error:
            pass
    return total / 2**20


def speed_probe() -> float:
    """Milliseconds of CPU for a fixed pure-Python loop: a shared machine's speed drifts within minutes
    (other tenants; docs/performance.md), so every measured row carries the probe taken just before it."""
    t = time.process_time()
    x = 0
    for i in range(2_000_000):
        x += i
    return round(1000 * (time.process_time() - t), 1)


def run_child(argv: list[str], *, env: dict[str, str] | None = None, result_file: Path | None = None,
              log_file: Path, cwd: Path = ROOT, sample_s: float = 0.2, timeout_s: float = 3600) -> ChildRun:
    """Run argv to completion, measuring wall time, CPU (wait4 rusage) and RSS over time."""
    if result_file is not None and result_file.exists():
        result_file.unlink()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_file, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=full_env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample() -> None:
            try:
                ps = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not stop.is_set():
                samples.append((time.perf_counter() - t0, _tree_rss(ps)))
                stop.wait(sample_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        killer = threading.Timer(timeout_s, lambda: proc.kill())
        killer.start()
        # wait4 instead of Popen.wait: it hands back this child's own rusage.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
    payload: dict[str, Any] = {}
    if result_file is not None and result_file.exists():
        payload = json.loads(result_file.read_text())
    text = log_file.read_text(errors="replace")
    return ChildRun(
        argv=[str(a) for a in argv], returncode=proc.returncode, wall_s=wall,
        cpu_user_s=usage.ru_utime, cpu_sys_s=usage.ru_stime, peak_rss_mb=usage.ru_maxrss / 1024,
        peak_tree_rss_mb=max((m for _, m in samples), default=0.0), rss_samples=samples, payload=payload,
        log=text[-4000:],
    )


class SandboxProcess:
    """A `pipelines.sandbox.Sandbox` running in its own process (bench/sandbox_proc.py), driven over a pipe."""

    def __init__(self, config: dict[str, Any], faults: dict[str, Any] | None = None, log_file: Path | None = None):
        spec = json.dumps({"config": config, "faults": faults or {}})
        self._log = open(log_file, "wb") if log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen([PYTHON, "-m", "bench.sandbox_proc", spec], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)
        self.info = self._read()
        self.url: str = self.info["url"]
        self.carecloud_base_url: str = self.info["carecloud_base_url"]
        self.capillary_base_url: str = self.info["capillary_base_url"]
        self.ps = psutil.Process(self.proc.pid)

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"sandbox process exited (code {self.proc.poll()}); see its log")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"sandbox: {msg['error']}")
        return msg

    def call(self, cmd: str, **kw: Any) -> Any:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._read().get("result")

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def stop(self) -> None:
        try:
            self.call("stop")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> "SandboxProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def machine_facts() -> dict[str, Any]:
    import platform

    facts: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import dlt
        import duckdb
        import pyarrow

        facts.update(dlt=dlt.__version__, duckdb=duckdb.__version__, pyarrow=pyarrow.__version__)
    except Exception:
        pass
    return facts


def save_scenario(path: Path, keys: tuple[str, ...], result: dict[str, Any]) -> None:
    """Stamp a scenario's result (when, which commit, which machine) and merge it into the results file under
    `keys` only: the other scenarios' results stay as they are (a scenario run alone must not erase them); the
    `targets` block is derived again from the merged results."""
    import datetime as dt

    result["measured_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    result["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                          text=True).stdout.strip()
    result["machine"] = machine_facts()
    data = json.loads(path.read_text()) if path.exists() else {}
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = result
    if "targets" in data:   # the target lines follow every scenario's latest result, not only a full run's
        from bench.report import targets

        data["targets"] = targets(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
