"""Benchmark scenarios: sanic-chat and the floor, measured the same way in one run.

    python -m benchmarks.run --scenario seed
    python -m benchmarks.run --scenario capacity --max-minutes 18
    python -m benchmarks.run --scenario soak --duration 1800
    python -m benchmarks.run --scenario slow-consumers

Each scenario starts the fake LLM (200 ms to first token, then 100 tokens at
50 tokens/s), sanic-chat on PostgreSQL in a schema of its own (created by
``sanic-chat migrate``, dropped at the end) with JWT auth and one user per
load-generator user, the OpenAI-compatible provider pointed at the fake, and
the load generator (:mod:`benchmarks.load`) as a separate process; then the
floor (:mod:`benchmarks.floor`) the same way against the same fake. Resource
use of every process (CPU, RSS, file descriptors) is sampled with psutil.

Full outputs go to ``--out`` (default ``benchmarks/out/``, not committed);
small plots and summaries to ``benchmarks/results/``, and the numbers to
``benchmarks/RESULTS.md`` (one section per scenario, replaced on each run).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from . import report
from ._support import drop_schema

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS_MD = BENCH / "RESULTS.md"
RESULTS_DIR = BENCH / "results"

#: the upstream every scenario uses (the fake LLM's settings)
UPSTREAM_TTFT_MS = 200.0
UPSTREAM_TPS = 50.0
UPSTREAM_TOKENS = 100
#: first token at TTFT, then one every 1/TPS: the upstream's own whole stream
UPSTREAM_STREAM_MS = UPSTREAM_TTFT_MS + (UPSTREAM_TOKENS - 1) * 1000.0 / UPSTREAM_TPS
TTFC_LIMIT_MS = 1000.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{url}: the process exited ({process.returncode}):\n{log.read_text()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{log.read_text()}")


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self, timeout: float = 40.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


#: --nice: the niceness increment of every process the bench starts (negative: priority)
NICE = 0


def _priority() -> None:
    if NICE:
        os.nice(NICE)


def start(name: str, argv: list[str], env: dict[str, str], health: str, out: Path) -> Service:
    log = out / f"{name}.log"
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            argv, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=_priority
        )
    service = Service(name, process, health.rsplit("/", 1)[0], log)
    try:
        wait_http(health, process, log)
    except BaseException:
        service.stop(5)
        raise
    return service


# --------------------------------------------------------------------------- resources


@dataclass
class Sampler:
    """Samples CPU %, RSS and open file descriptors of some processes."""

    interval: float = 1.0
    pids: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def watch(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def forget(self, name: str) -> None:
        self.pids.pop(name, None)

    def start(self) -> Sampler:
        # psutil comes with the bench extra only; the harness's tests run on the
        # test extra, where sampling is off (and says so) instead of the sampling
        # thread dying with ModuleNotFoundError.
        if importlib.util.find_spec("psutil") is None:
            print(
                "benchmarks: psutil is not installed (pip install -e '.[bench]'): "
                "no CPU, RSS or fd samples",
                file=sys.stderr,
            )
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        import psutil

        handles: dict[int, Any] = {}
        cores = psutil.cpu_count() or 1
        psutil.cpu_percent(None)
        t0 = time.monotonic()

        def measure(procs: list[Any]) -> dict[str, Any] | None:
            """CPU %, RSS and fds summed over ``procs`` (a process's first
            sample only primes its CPU counter)."""
            cpu, rss, fds, seen = 0.0, 0, 0, False
            for proc in procs:
                try:
                    handle = handles.get(proc.pid)
                    if handle is None:
                        handles[proc.pid] = proc
                        proc.cpu_percent(None)
                        continue
                    with handle.oneshot():
                        cpu += handle.cpu_percent(None)
                        rss += handle.memory_info().rss
                        fds += handle.num_fds()
                    seen = True
                except psutil.Error:
                    continue
            if not seen:
                return None
            return {"cpu": round(cpu, 1), "rss_mb": round(rss / 2**20, 1), "fds": fds}

        while not self._stop.wait(self.interval):
            row: dict[str, Any] = {"t": round(time.monotonic() - t0, 1)}
            busy = psutil.cpu_percent(None) / 100.0 * cores
            for name, pid in list(self.pids.items()):
                try:
                    root = handles.get(pid) or psutil.Process(pid)
                    # the load generator's workers are its children
                    procs = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                measured = measure(procs)
                if measured is not None:
                    row[name] = measured
            # PostgreSQL's backends (and Redis, the bus of several workers) serve
            # the server: count them, not as "other jobs"
            for name, binary in (("postgres", "postgres"), ("redis", "redis-server")):
                found = [p for p in psutil.process_iter(["name"]) if p.info["name"] == binary]
                measured = measure(found)
                if measured is not None:
                    row[name] = measured
            ours = sum(v["cpu"] for k, v in row.items() if k != "t") / 100.0
            # CPU the machine spent on anything but this benchmark (other jobs)
            row["others_cores"] = round(max(0.0, busy - ours), 2)
            self.samples.append(row)

    def window(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        return [s for s in self.samples if s["t"] >= since and (until is None or s["t"] <= until)]

    def mark(self) -> float:
        return self.samples[-1]["t"] if self.samples else 0.0


def cpu_summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = {k for s in samples for k in s if k not in ("t", "others_cores")}
    for name in sorted(names):
        values = [s[name] for s in samples if name in s]
        if not values:
            continue
        cpus = sorted(v["cpu"] for v in values)
        out[name] = {
            "cpu_mean": round(sum(cpus) / len(cpus), 1),
            "cpu_p90": report.percentile(cpus, 90),
            "rss_mb_max": max(v["rss_mb"] for v in values),
            "fds_max": max(v["fds"] for v in values),
        }
    others = sorted(s["others_cores"] for s in samples if "others_cores" in s)
    if others:
        out["others_cores_mean"] = round(sum(others) / len(others), 2)
        out["others_cores_p90"] = report.percentile(others, 90)
    return out


#: the server's own histograms reported next to the load generator's view
SERVER_HISTOGRAMS = (
    "sanic_chat_event_loop_lag_seconds",
    "sanic_chat_persist_seconds",
    "sanic_chat_first_chunk_seconds",
)


def server_histograms(url: str) -> dict[str, dict[str, float]]:
    """{histogram: {"le bound" or "sum"/"count": cumulative value}} from ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    with contextlib.suppress(httpx.HTTPError):
        text = httpx.get(f"{url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            if family.name not in SERVER_HISTOGRAMS:
                continue
            values = out.setdefault(family.name, {})
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    key = sample.labels["le"]
                elif sample.name.endswith("_sum"):
                    key = "sum"
                elif sample.name.endswith("_count"):
                    key = "count"
                else:
                    continue
                values[key] = values.get(key, 0.0) + sample.value
    return out


def histogram_delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float | None]]:
    """Mean, and p50/p99 as the bucket bound they fall under, in ms, of what each
    histogram observed between the two scrapes."""
    out: dict[str, dict[str, float | None]] = {}
    for name, values in after.items():
        old = before.get(name, {})
        count = values.get("count", 0.0) - old.get("count", 0.0)
        if count <= 0:
            continue
        total = values.get("sum", 0.0) - old.get("sum", 0.0)
        bounds = sorted(
            (float(k), values[k] - old.get(k, 0.0)) for k in values if k not in ("sum", "count")
        )

        def quantile(
            q: float, bounds: list[tuple[float, float]] = bounds, n: float = count
        ) -> float | None:
            for bound, cumulative in bounds:
                if cumulative >= q * n:
                    return None if bound == float("inf") else round(bound * 1000, 1)
            return None

        out[name.removeprefix("sanic_chat_").removesuffix("_seconds")] = {
            "count": count,
            "mean_ms": round(total / count * 1000, 1),
            "p50_le_ms": quantile(0.5),
            "p99_le_ms": quantile(0.99),
        }
    return out


def wait_idle(max_wait: float, threshold_cores: float = 0.3) -> float:
    """Wait (at most ``max_wait`` s) until other jobs leave the CPU nearly idle,
    so that a run measures the server and not a neighbour; the busy cores seen last."""
    import psutil

    cores = psutil.cpu_count() or 1
    deadline = time.monotonic() + max_wait
    busy = psutil.cpu_percent(interval=2.0) / 100.0 * cores
    while busy > threshold_cores and time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=2.0) / 100.0 * cores
    return round(busy, 2)


# --------------------------------------------------------------------------- the bench


#: what the server and the floor stand on: their versions move the numbers
#: (the floor's upstream reads go through httpcore on anyio)
_PACKAGES = (
    "httpx",
    "httpcore",
    "anyio",
    "h11",
    "httptools",
    "uvloop",
    "websockets",
    "aiopg",
    "psycopg2-binary",
)


def _package_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in _PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name} {version(name)}")
    return ", ".join(found)


def machine() -> dict[str, str]:
    def run(cmd: str) -> str:
        try:
            return subprocess.run(
                shlex.split(cmd), capture_output=True, text=True, timeout=10
            ).stdout.strip("\n")
        except (OSError, subprocess.SubprocessError):
            return "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import sanic

    return {
        "nproc": run("nproc"),
        "free": run("free -h"),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sanic": sanic.__version__,
        "postgres": run("psql -h 127.0.0.1 -U postgres -d test -Atc 'show server_version'"),
        "packages": _package_versions(),
        "commit": run(f"git -C {ROOT} rev-parse --short HEAD"),
        "uncommitted": str(len(run(f"git -C {ROOT} status --porcelain -uno").splitlines())),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


class Bench:
    """The fake LLM, and sanic-chat or the floor on demand, for one scenario."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.fake: Service | None = None
        self.schema = f"bench_{os.getpid()}_{int(time.time())}"
        self.secret = secrets.token_hex(32)
        self.tokens_file = out / "tokens.txt"
        self.sampler = Sampler(interval=args.sample_interval).start()
        self.base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    # -- upstream

    def start_fake(self) -> None:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "sanic_chat",
            "fake-llm",
            "--port",
            str(port),
            "--ttft-ms",
            str(UPSTREAM_TTFT_MS),
            "--tokens-per-second",
            str(UPSTREAM_TPS),
            "--reply-tokens",
            str(UPSTREAM_TOKENS),
        ]
        self.fake = start(
            "fake-llm", argv, self.base_env, f"http://127.0.0.1:{port}/healthz", self.out
        )
        self.sampler.watch("fake-llm", self.fake.process.pid)

    @property
    def upstream(self) -> str:
        assert self.fake is not None
        return f"{self.fake.url}/v1"

    def fake_stats(self) -> dict[str, Any]:
        assert self.fake is not None
        with contextlib.suppress(httpx.HTTPError):
            return orjson.loads(httpx.get(f"{self.fake.url}/_fake/stats", timeout=5).content)  # type: ignore[no-any-return]
        return {}

    # -- sanic-chat

    def database_url(self) -> str:
        base = self.args.database_url
        sep = "&" if "?" in base else "?"
        return f"{base}{sep}schema={self.schema}"

    def server_env(self, users: int) -> dict[str, str]:
        models = self.out / "models.toml"
        models.write_text(
            'default = "bench"\n[models.bench]\nprovider = "openai"\n'
            f'base_url = "{self.upstream}"\nmodel = "fake"\n'
        )
        self.write_tokens(users)
        env = {
            **self.base_env,
            "SANIC_CHAT_DATABASE_URL": self.database_url(),
            "SANIC_CHAT_MODELS": str(models),
            "SANIC_CHAT_AUTH": "jwt",
            "SANIC_CHAT_JWT_SECRET": self.secret,
            "SANIC_CHAT_DATA_DIR": str(self.out / "data"),
            "SANIC_CHAT_LOG_LEVEL": "WARNING",
        }
        if self.args.server_workers > 1:
            env["SANIC_CHAT_BUS_URL"] = self.args.bus_url  # workers share live replies through it
        for item in self.args.server_env:
            key, _, value = item.partition("=")
            env[key] = value
        return env

    def write_tokens(self, users: int) -> None:
        import jwt

        now = int(time.time())
        tokens = [
            jwt.encode({"sub": f"bench-{i}", "iat": now, "exp": now + 86400}, self.secret, "HS256")
            for i in range(users)
        ]
        self.tokens_file.write_text("\n".join(tokens) + "\n")
        self.tokens_file.chmod(0o600)

    def start_server(self, users: int) -> Service:
        env = self.server_env(users)
        subprocess.run(
            [sys.executable, "-m", "sanic_chat", "migrate"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=120,
        )
        port = free_port()
        argv = [sys.executable, "-m", "sanic_chat", "serve", "--port", str(port)]
        if self.args.server_workers > 1:
            argv += ["--workers", str(self.args.server_workers)]  # the sampler sums its children
        return start("sanic-chat", argv, env, f"http://127.0.0.1:{port}/healthz", self.out)

    def start_floor(self) -> Service:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "benchmarks.floor",
            "--port",
            str(port),
            "--upstream",
            self.upstream,
        ]
        if self.args.floor_reuse_upstream:
            argv.append("--reuse-upstream")
        return start("floor", argv, self.base_env, f"http://127.0.0.1:{port}/healthz", self.out)

    def stop_target(self, service: Service) -> None:
        self.sampler.forget("server")
        service.stop()

    def drop_schema(self) -> None:
        with contextlib.suppress(Exception):
            drop_schema(self.args.database_url.split("?", 1)[0], self.schema)

    def close(self) -> None:
        self.sampler.stop()
        if self.fake is not None:
            self.fake.stop(10)
        self.drop_schema()
        with contextlib.suppress(OSError):
            self.tokens_file.unlink()

    # -- load

    def load(
        self,
        target: Service,
        label: str,
        *,
        users: int,
        duration: float,
        out: Path,
        sanic_chat: bool,
        extra: list[str] = (),  # type: ignore[assignment]
        profile: bool = False,
    ) -> dict[str, Any]:
        a = self.args
        workers = a.gen_workers or (1 if users <= 300 else 2)
        spawn_rate = a.spawn_rate or max(20.0, users / 10.0)
        argv = [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--url",
            target.url,
            "--users",
            str(users),
            "--duration",
            str(duration),
            "--spawn-rate",
            str(spawn_rate),
            "--think-time",
            str(a.think_time),
            "--transport",
            a.transport,
            "--label",
            label,
            "--out",
            str(out),
            "--workers",
            str(workers),
            "--warmup",
            str(a.warmup if a.warmup is not None else min(users / spawn_rate, duration / 3)),
            "--upstream-ttft-ms",
            str(UPSTREAM_TTFT_MS),
            "--upstream-stream-ms",
            str(UPSTREAM_STREAM_MS),
            *extra,
        ]
        if sanic_chat:
            argv += ["--tokens-file", str(self.tokens_file)]
        else:
            argv += ["--no-db-check"]
        shown = " ".join(shlex.quote(_display(x, target.url)) for x in argv[3:])
        busy = wait_idle(a.wait_idle) if a.wait_idle > 0 else None
        print(f"\n== {label}: {users} users, {duration:.0f} s ({shown})", flush=True)
        if busy is not None:
            print(f"   (other jobs kept {busy} cores busy when it started)", flush=True)
        self.sampler.watch("server", target.process.pid)
        mark = self.sampler.mark()
        histograms_before = server_histograms(target.url) if sanic_chat else {}
        generator = subprocess.Popen(
            argv, cwd=ROOT, env=self.base_env, stdout=subprocess.PIPE, preexec_fn=_priority
        )
        self.sampler.watch("load-generator", generator.pid)
        profiler = self._profile(target, label, duration, out) if profile else None
        stdout, _ = generator.communicate(timeout=duration + a.reply_timeout + 600)
        self.sampler.forget("load-generator")
        self.sampler.forget("server")
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(60)
            raw = out / f"{label}-profile.txt"
            if raw.exists():
                (out / f"{label}-profile-top.txt").write_text(report.profile_top(raw.read_text()))
        if generator.returncode != 0:
            raise RuntimeError(f"the load generator failed ({generator.returncode})")
        print(stdout.decode(), flush=True)
        result: dict[str, Any] = orjson.loads((out / f"{label}.json").read_bytes())
        result["steady"] = [mark + result["config"]["warmup"], mark + duration]
        result["resources"] = cpu_summary(self.sampler.window(mark))
        server_cpu = result["resources"].get("server", {}).get("cpu_mean")
        whole = result["summary"].get("whole_run", result["summary"])
        if server_cpu is not None and whole["completed"]:
            # CPU time is less disturbed by neighbours than latency is
            result["server_cpu_ms_per_reply"] = round(
                server_cpu / 100.0 * result["wall_s"] * 1000.0 / whole["completed"], 1
            )
        result["resource_samples"] = self.sampler.window(mark)
        if sanic_chat:
            result["server_view"] = histogram_delta(
                histograms_before, server_histograms(target.url)
            )
        result["command"] = "python -m benchmarks.load " + shown
        return result

    def _profile(
        self, target: Service, label: str, duration: float, out: Path
    ) -> subprocess.Popen[bytes] | None:
        """py-spy on the server from a third of the run, for half of it."""
        delay = duration / 3
        length = max(5, int(duration / 2))
        svg = out / f"{label}-profile.svg"
        raw = out / f"{label}-profile.txt"
        cmd = (
            f"sleep {delay:.0f}; py-spy record --pid {target.process.pid} --duration {length} "
            f"--rate 100 --nonblocking --format raw -o {shlex.quote(str(raw))} && "
            f"py-spy record --pid {target.process.pid} --duration 5 --rate 100 --nonblocking "
            f"-o {shlex.quote(str(svg))}"
        )
        out.mkdir(parents=True, exist_ok=True)
        log = (out / f"{label}-profile.log").open("wb")
        return subprocess.Popen(["sh", "-c", cmd], stdout=log, stderr=subprocess.STDOUT)


# --------------------------------------------------------------------------- scenarios


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    s = result["summary"]
    return {
        "ttfc_p50": s["ttfc_ms"]["p50"],
        "ttfc_p99": s["ttfc_ms"]["p99"],
        "overhead_p50": s.get("ttfc_overhead_ms", {}).get("p50"),
        "overhead_p99": s.get("ttfc_overhead_ms", {}).get("p99"),
        "full_p50": s["full_reply_ms"]["p50"],
        "full_p99": s["full_reply_ms"]["p99"],
        "full_mean": s["full_reply_ms"]["mean"],
        "persist_p50": s["persist_ms"]["p50"],
        "persist_p99": s["persist_ms"]["p99"],
        "completed": s["completed"],
        "messages": s["messages"],
        "lossless": report.lossless(s),
        "drops": result["connections"]["drops"],
        "cpu_ms_per_reply": result.get("server_cpu_ms_per_reply"),
    }


def _display(arg: str, url: str) -> str:
    """An argument as the commands in RESULTS.md show it: no ports, no absolute paths."""
    if arg == url:
        return "http://127.0.0.1:PORT"
    with contextlib.suppress(ValueError):
        return str(Path(arg).relative_to(ROOT))
    return arg


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}"
    return str(v)


def comparison_table(chat: dict[str, Any], floor: dict[str, Any] | None) -> str:
    c = _headline(chat)
    f = _headline(floor) if floor else {}
    rows = [
        ("first chunk p50, ms", "ttfc_p50"),
        ("first chunk p99, ms", "ttfc_p99"),
        ("overhead over upstream TTFT (200 ms) p50, ms", "overhead_p50"),
        ("overhead over upstream TTFT (200 ms) p99, ms", "overhead_p99"),
        ("full reply p50, ms (upstream stream: 2,180)", "full_p50"),
        ("full reply p99, ms", "full_p99"),
        ("full reply mean, ms", "full_mean"),
        ("persist (to message.accepted) p50, ms", "persist_p50"),
        ("persist (to message.accepted) p99, ms", "persist_p99"),
        ("server CPU per reply (100 deltas), ms", "cpu_ms_per_reply"),
    ]
    lines = ["| measure | sanic-chat | floor | ratio |", "|---|---:|---:|---:|"]
    for name, key in rows:
        lines.append(
            f"| {name} | {_num(c[key])} | {_num(f.get(key))} | {_ratio(c[key], f.get(key))} |"
        )
    lines.append(
        f"| messages completed | {c['completed']}/{c['messages']} | "
        f"{_num(f.get('completed'))}/{_num(f.get('messages'))} | |"
    )
    loss_c = "none" if c["lossless"] else "LOSS"
    loss_f = "-" if not f else ("none" if f["lossless"] else "LOSS")
    lines.append(f"| lost / duplicated text | {loss_c} | {loss_f} | |")
    lines.append(f"| dropped connections | {c['drops']} | {_num(f.get('drops'))} | |")
    for who, result in (("sanic-chat", chat), ("floor", floor)):
        if not result:
            continue
        res = result.get("resources", {})
        server = res.get("server", {})
        gen = res.get("load-generator", {})
        fake = res.get("fake-llm", {})
        postgres = res.get("postgres", {})
        lines.append(
            f"| CPU % of one core: {who} server / fake LLM / load generator / PostgreSQL | "
            f"{server.get('cpu_mean', '-')} / {fake.get('cpu_mean', '-')} / "
            f"{gen.get('cpu_mean', '-')} / {postgres.get('cpu_mean', '-')} | | |"
        )
    lines.append(
        "| CPU cores busy with other jobs on the machine (mean) | "
        f"{chat.get('resources', {}).get('others_cores_mean', '-')} | "
        f"{(floor or {}).get('resources', {}).get('others_cores_mean', '-')} | |"
    )
    db = chat.get("db_check")
    text = "\n".join(lines) + "\n"
    if c["cpu_ms_per_reply"] and f.get("cpu_ms_per_reply"):
        cycle = chat["config"]["think_time"] + UPSTREAM_STREAM_MS / 1000.0
        text += (
            "\nOne core, if CPU were the only limit: "
            f"{1000.0 / c['cpu_ms_per_reply'] * cycle:,.0f} users for sanic-chat, "
            f"{1000.0 / f['cpu_ms_per_reply'] * cycle:,.0f} for the floor "
            f"(1 s / CPU per reply x {cycle:.1f} s per user cycle of think + reply).\n"
        )
    if db:
        text += (
            f"\nDatabase check (sanic-chat): {db['found']}/{db['acknowledged']} acknowledged user "
            f"messages found through `GET /api/v1/conversations/{{id}}/messages`, "
            f"{db['missing']} missing; {db['replies_checked'] - db['reply_mismatches']}/"
            f"{db['replies_checked']} completed replies stored complete with the streamed length.\n"
        )
    lag_c = chat["generator"]["loop_lag_ms_p99"]
    lag_f = floor["generator"]["loop_lag_ms_p99"] if floor else "-"
    text += (
        f"Load generator event-loop lag p99: {lag_c} ms (sanic-chat run), {lag_f} ms (floor run).\n"
    )
    view = chat.get("server_view") or {}
    if view:
        parts = [
            f"{name.replace('_', ' ')} mean {v['mean_ms']} ms, p99 under {v['p99_le_ms']} ms"
            for name, v in view.items()
        ]
        text += "sanic-chat's own histograms (`/metrics`, first round): " + "; ".join(parts) + ".\n"
    return text


def plots(name: str, chat: dict[str, Any], floor: dict[str, Any] | None) -> list[Path]:
    series_rows = {"sanic-chat": chat["rows"]}
    series_timeline = {"sanic-chat": (chat["rows"], chat["timeline"])}
    if floor:
        series_rows["floor"] = floor["rows"]
        series_timeline["floor"] = (floor["rows"], floor["timeline"])
    return [
        report.plot_latency(
            series_rows, RESULTS_DIR / f"{name}-latency.png", title=f"{name}: latency CDF"
        ),
        report.plot_ttfc_timeline(
            series_timeline,
            RESULTS_DIR / f"{name}-ttfc.png",
            title=f"{name}: first chunk over time",
        ),
    ]


def save_summary(name: str, data: dict[str, Any]) -> None:
    def strip(result: Any) -> Any:
        if isinstance(result, dict):
            return {k: strip(v) for k, v in result.items() if k not in ("rows", "resource_samples")}
        if isinstance(result, list):
            return [strip(v) for v in result]
        return result

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_bytes(
        orjson.dumps(strip(data), option=orjson.OPT_INDENT_2)
    )


def paired(
    bench: Bench,
    args: argparse.Namespace,
    *,
    users: int,
    duration: float,
    extra: list[str] = (),  # type: ignore[assignment]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """sanic-chat and the floor, both up, taking turns for ``--rounds`` rounds
    (A B, B A, A B, ...) of ``duration / rounds`` each, so that neighbours on a
    shared machine and any drift fall on both alike; the rounds are pooled."""
    bench.start_fake()
    services = {"sanic-chat": bench.start_server(users)}
    if not args.skip_floor:
        services["floor"] = bench.start_floor()
    rounds = max(1, args.rounds)
    parts: dict[str, list[dict[str, Any]]] = {name: [] for name in services}
    try:
        for r in range(rounds):
            order = list(services) if r % 2 == 0 else list(reversed(services))
            for name in order:
                parts[name].append(
                    bench.load(
                        services[name],
                        name,
                        users=users,
                        duration=duration / rounds,
                        out=bench.out / f"round-{r + 1}",
                        sanic_chat=name == "sanic-chat",
                        extra=extra,
                        profile=args.profile and name == "sanic-chat" and r == rounds // 2,
                    )
                )
    finally:
        for service in services.values():
            bench.stop_target(service)
    chat = pool(parts["sanic-chat"])
    floor = pool(parts["floor"]) if "floor" in parts else None
    return chat, floor


def pool(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one target as one result: rows and timelines end to end,
    latencies over the measured (post-warm-up) rows, counts summed."""
    if len(results) == 1:
        return results[0]
    rows: list[dict[str, Any]] = []
    measured: list[dict[str, Any]] = []
    timeline: list[list[float]] = []
    samples: list[dict[str, Any]] = []
    offset = measured_wall = 0.0
    for result in results:
        warmup = result["config"]["warmup"]
        for row in result["rows"]:
            shifted = {**row, "sent_at": round(row["sent_at"] + offset, 3)}
            rows.append(shifted)
            if row["sent_at"] >= warmup:
                measured.append(shifted)
        timeline += [[t + offset, a, f] for t, a, f in result["timeline"]]
        start = result["resource_samples"][0]["t"] if result["resource_samples"] else 0.0
        samples += [
            {**x, "t": round(x["t"] - start + offset, 1)} for x in result["resource_samples"]
        ]
        measured_wall += max(result["wall_s"] - warmup, 1e-9)
        offset += result["wall_s"]
    first = results[0]
    cfg = first["config"]
    summary = report.summarize(
        measured or rows,
        wall_s=measured_wall,
        upstream_ttft_ms=cfg["upstream_ttft_ms"],
        upstream_stream_ms=cfg["upstream_stream_ms"],
    )
    everything = report.summarize(rows, wall_s=offset)
    summary["loss"], summary["resumes"] = everything["loss"], everything["resumes"]
    summary["whole_run"] = {
        k: everything[k] for k in ("messages", "completed", "outcomes", "errors")
    }
    connections: dict[str, Any] = {"connect_errors": 0, "drops": 0, "drops_by_code": {}}
    for result in results:
        conn = result["connections"]
        connections["connect_errors"] += conn["connect_errors"]
        connections["drops"] += conn["drops"]
        for code, n in conn["drops_by_code"].items():
            connections["drops_by_code"][code] = connections["drops_by_code"].get(code, 0) + n
    totals: dict[str, int] = {}
    for result in results:
        for key, value in (result.get("db_check") or {}).items():
            if isinstance(value, int):
                totals[key] = totals.get(key, 0) + value
    db = totals or None
    cpu_ms = [
        r["server_cpu_ms_per_reply"] * r["summary"].get("whole_run", r["summary"])["completed"]
        for r in results
        if r.get("server_cpu_ms_per_reply")
    ]
    return {
        **first,
        "wall_s": round(offset, 2),
        "config": {**cfg, "duration": sum(r["config"]["duration"] for r in results)},
        "rounds": len(results),
        "summary": summary,
        "connections": connections,
        "db_check": db,
        "generator": {
            "workers": first["generator"]["workers"],
            "loop_lag_ms_p99": max(r["generator"]["loop_lag_ms_p99"] for r in results),
            "loop_lag_ms_max": max(r["generator"]["loop_lag_ms_max"] for r in results),
        },
        "timeline": timeline,
        "rows": rows,
        "resource_samples": samples,
        "resources": cpu_summary(samples),
        "server_cpu_ms_per_reply": (
            round(sum(cpu_ms) / everything["completed"], 1)
            if cpu_ms and everything["completed"]
            else None
        ),
        "command": first["command"] + f"  # x {len(results)} rounds",
    }


def scenario_seed(bench: Bench, args: argparse.Namespace) -> str:
    users, duration = args.users or 100, args.duration or 60.0
    chat, floor_result = paired(bench, args, users=users, duration=duration)
    pngs = plots(args.scenario, chat, floor_result)
    save_summary(args.scenario, {"sanic-chat": chat, "floor": floor_result})
    body = (
        f"{users} users over {args.transport}, each sending a message, reading the whole reply, "
        f"thinking {args.think_time} s (±50 %), for {duration:.0f} s per target, in "
        f"{args.rounds} rounds taking turns with the floor (messages sent in each round's "
        f"first {chat['config']['warmup']:.0f} s of ramp-up are left out of the latencies, not "
        "out of the loss and database checks).\n\n"
    )
    body += comparison_table(chat, floor_result)
    body += "\n" + _images(pngs) + "\n"
    body += _commands(args, [chat, floor_result])
    return body


def _workers_note(args: argparse.Namespace) -> str:
    """How sanic-chat was run, when not as the one process the floor is."""
    if args.server_workers <= 1:
        return ""
    return (
        f" sanic-chat ran as {args.server_workers} worker processes sharing the Redis bus "
        "(its CPU is the sum over them); the floor is one process."
    )


def scenario_capacity(bench: Bench, args: argparse.Namespace) -> str:
    steps = [int(x) for x in args.steps.split(",")]
    duration = args.duration or 40.0
    budget_end = time.monotonic() + args.max_minutes * 60.0
    bench.start_fake()
    outcomes: dict[str, list[dict[str, Any]]] = {"sanic-chat": [], "floor": []}
    targets = ["sanic-chat"] + ([] if args.skip_floor else ["floor"])
    # both targets stay up (an idle one costs nothing) and take turns at each
    # step, so that both meet the same neighbours on a shared machine
    services = {"sanic-chat": bench.start_server(max(steps))}
    if "floor" in targets:
        services["floor"] = bench.start_floor()
    search = {name: _Search(steps) for name in targets}
    try:
        while True:
            todo = [(name, search[name].next()) for name in targets]
            todo = [(name, users) for name, users in todo if users is not None]
            if not todo:
                break
            needed = sum(duration + 30 for _ in todo)
            if time.monotonic() + needed > budget_end:
                print(f"capacity: time budget reached before {todo}", flush=True)
                break
            for name, users in todo:
                assert users is not None
                result = bench.load(
                    services[name],
                    name,
                    users=users,
                    duration=duration,
                    out=bench.out / f"{name}-{users}",
                    sanic_chat=name == "sanic-chat",
                )
                s = result["summary"]
                ok = (
                    s["ttfc_ms"]["p99"] is not None
                    and s["ttfc_ms"]["p99"] <= TTFC_LIMIT_MS
                    and s["messages"] > 0
                    and s["completed"] >= 0.99 * s["messages"]
                )
                search[name].record(users, ok)
                outcomes[name].append(
                    {
                        "users": users,
                        "passed": ok,
                        **_headline(result),
                        "resources": result["resources"],
                        "lag_p99": result["generator"]["loop_lag_ms_p99"],
                        "server_lag": (result.get("server_view") or {})
                        .get("event_loop_lag", {})
                        .get("mean_ms", "-"),
                        "connect_errors": result["connections"]["connect_errors"],
                    }
                )
    finally:
        for service in services.values():
            bench.stop_target(service)
    save_summary("capacity", outcomes)
    best = {
        name: max((o["users"] for o in runs if o["passed"]), default=0)
        for name, runs in outcomes.items()
    }
    #: targets that never failed: their limit lies beyond the steps tried
    unbounded = {name for name, runs in outcomes.items() if runs and all(o["passed"] for o in runs)}
    body = (
        f"Users stepped up ({args.steps}), {duration:.0f} s per step with think time "
        f"{args.think_time} s over {args.transport}, until p99 time to first chunk passes "
        f"{TTFC_LIMIT_MS:.0f} ms (or fewer than 99 % of messages complete), then halving the "
        "interval between the last pass and the first failure down to 25-50 users. The two "
        "targets take turns at each step."
        f"{_workers_note(args)}\n\n"
        "| | largest passing user count | ratio |\n|---|---:|---:|\n"
        f"| sanic-chat | {_best(best, 'sanic-chat', unbounded)} | "
        f"{'at least ' if 'sanic-chat' in unbounded else ''}"
        f"{_ratio(best['sanic-chat'], best.get('floor'))} |\n"
        f"| floor | {_best(best, 'floor', unbounded)} | |\n\n"
        + (
            "A count marked *or more* passed every step tried: the limit is higher than "
            "the last step (add larger `--steps` to find it).\n\n"
            if unbounded
            else ""
        )
        + _cpu_estimate(outcomes, args.think_time)
        + "| target | users | pass | TTFC p50 / p99, ms | persist p99, ms | full reply p50, ms "
        "| completed | server CPU % (ms per reply) | load generator / fake LLM / PostgreSQL CPU % "
        "| other jobs, cores | server / generator event-loop lag, mean / p99 ms |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for name, runs in outcomes.items():
        for o in sorted(runs, key=lambda r: r["users"]):
            cpu = o["resources"].get("server", {}).get("cpu_mean", "-")
            others = o["resources"].get("others_cores_mean", "-")
            helpers = " / ".join(
                str(o["resources"].get(k, {}).get("cpu_mean", "-"))
                for k in ("load-generator", "fake-llm", "postgres")
            )
            body += (
                f"| {name} | {o['users']} | {'yes' if o['passed'] else 'no'} | "
                f"{_num(o['ttfc_p50'])} / {_num(o['ttfc_p99'])} | {_num(o['persist_p99'])} | "
                f"{_num(o['full_p50'])} | {o['completed']}/{o['messages']} | "
                f"{cpu} ({o['cpu_ms_per_reply']}) | {helpers} | {others} | "
                f"{o.get('server_lag', '-')} / {o['lag_p99']} |\n"
            )
    png = _capacity_plot(outcomes)
    body += "\n" + _images([png]) + "\n"
    body += (
        "\nCommand:\n\n```sh\n"
        "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "\n```\n"
    )
    return body


def _best(best: dict[str, int], name: str, unbounded: set[str]) -> str:
    if name not in best:
        return "-"
    return f"{best[name]} or more" if name in unbounded else str(best[name])


def _cpu_estimate(outcomes: dict[str, list[dict[str, Any]]], think_time: float) -> str:
    """Users one core could carry if CPU were the only limit, from the median
    server CPU per reply over the steps (robust to neighbours' noise)."""
    cycle = think_time + UPSTREAM_STREAM_MS / 1000.0
    estimates = {}
    for name, runs in outcomes.items():
        costs = sorted(r["cpu_ms_per_reply"] for r in runs if r.get("cpu_ms_per_reply"))
        if costs:
            median = costs[len(costs) // 2]
            estimates[name] = (median, 1000.0 / median * cycle)
    if not estimates:
        return ""
    text = (
        "Server CPU per reply (median over the steps) and the users one core could carry if "
        f"CPU were the only limit (1 s / CPU per reply x {cycle:.1f} s per user cycle):\n\n"
        "| | CPU per reply, ms | users per core | ratio |\n|---|---:|---:|---:|\n"
    )
    floor = estimates.get("floor")
    for name, (cost, users) in estimates.items():
        ratio = _ratio(users, floor[1]) if floor and name != "floor" else ""
        text += f"| {name} | {cost:.1f} | {users:,.0f} | {ratio} |\n"
    return text + "\n"


class _Search:
    """Step up through ``steps`` until a failure, then halve the interval
    between the last pass and the first failure down to 25-50 users."""

    def __init__(self, steps: list[int]) -> None:
        self.queue = list(steps)
        self.passed = 0
        self.failed: int | None = None
        self.tried: set[int] = set()

    def next(self) -> int | None:
        return self.queue[0] if self.queue else None

    def record(self, users: int, ok: bool) -> None:
        self.tried.add(users)
        if self.queue and self.queue[0] == users:
            self.queue.pop(0)
        if ok:
            self.passed = max(self.passed, users)
        else:
            self.failed = users if self.failed is None else min(self.failed, users)
        if self.failed is None:
            return
        step = 50 if self.failed > 200 else 25
        middle = round((self.passed + self.failed) / 2 / step) * step
        fresh = self.passed < middle < self.failed and middle not in self.tried
        self.queue = [middle] if fresh else []


def _capacity_plot(outcomes: dict[str, list[dict[str, Any]]]) -> Path:
    plt = report._pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    for name, runs in outcomes.items():
        runs = sorted(runs, key=lambda r: r["users"])
        if not runs:
            continue
        xs = [r["users"] for r in runs]
        ax.plot(xs, [r["ttfc_p99"] for r in runs], "o-", label=f"{name}: TTFC p99")
        ax.plot(xs, [r["ttfc_p50"] for r in runs], "x--", label=f"{name}: TTFC p50")
    ax.axhline(TTFC_LIMIT_MS, color="red", linewidth=0.8, linestyle=":", label="1 s limit")
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("time to first chunk, ms")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("capacity: first chunk vs users", fontsize=10)
    fig.tight_layout()
    path = RESULTS_DIR / "capacity-ttfc.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def scenario_soak(bench: Bench, args: argparse.Namespace) -> str:
    users, duration = args.users or 300, args.duration or 1800.0
    floor_duration = args.floor_duration or min(duration, 300.0)
    bench.start_fake()
    server = bench.start_server(users)
    try:
        chat = bench.load(
            server, "sanic-chat", users=users, duration=duration, out=bench.out, sanic_chat=True
        )
    finally:
        bench.stop_target(server)
    floor_result = None
    if not args.skip_floor:
        floor = bench.start_floor()
        try:
            floor_result = bench.load(
                floor,
                "floor",
                users=users,
                duration=floor_duration,
                out=bench.out,
                sanic_chat=False,
            )
        finally:
            bench.stop_target(floor)
    start, end = chat["steady"]  # users connected, before they leave
    samples = [s for s in chat["resource_samples"] if "server" in s and start <= s["t"] <= end]
    verdict = _flatness(samples)
    chat["flatness"] = verdict
    pngs = [*plots("soak", chat, floor_result), _resource_plot(samples)]
    save_summary("soak", {"sanic-chat": chat, "floor": floor_result})
    body = (
        f"{users} users over {args.transport} for {duration / 60:.0f} min (the floor: "
        f"{floor_duration / 60:.0f} min), think {args.think_time} s. Server RSS and open file "
        "descriptors sampled every "
        f"{args.sample_interval:.0f} s; 'flat' compares the mean of the second quarter of the run "
        "with the mean of the last quarter (after warm-up).\n\n"
        f"| server resource | 2nd quarter | last quarter | growth | flat |\n|---|---:|---:|---:|---|\n"
    )
    for key, row in verdict.items():
        body += (
            f"| {key} | {row['early']} | {row['late']} | {row['growth_pct']} % | "
            f"{'yes' if row['flat'] else 'NO'} |\n"
        )
    body += "\n" + comparison_table(chat, floor_result) + "\n" + _images(pngs) + "\n"
    body += _commands(args, [chat, floor_result])
    return body


def _flatness(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if len(samples) < 8:
        return out
    n = len(samples)
    early = samples[n // 4 : n // 2]
    late = samples[3 * n // 4 :]
    for key, tolerance in (("rss_mb", 10.0), ("fds", 5.0)):
        a = sum(s["server"][key] for s in early) / len(early)
        b = sum(s["server"][key] for s in late) / len(late)
        growth = (b - a) / a * 100.0 if a else 0.0
        out[key] = {
            "early": round(a, 1),
            "late": round(b, 1),
            "growth_pct": round(growth, 1),
            "flat": growth <= tolerance,
        }
    return out


def _resource_plot(samples: list[dict[str, Any]]) -> Path:
    plt = report._pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    fds_ax = ax.twinx()
    ts = [s["t"] - samples[0]["t"] for s in samples] if samples else []
    ax.plot(ts, [s["server"]["rss_mb"] for s in samples], color="tab:blue", label="RSS, MB")
    fds_ax.plot(ts, [s["server"]["fds"] for s in samples], color="tab:orange", label="open fds")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("server RSS, MB")
    fds_ax.set_ylabel("server open file descriptors")
    ax.set_ylim(bottom=0)
    fds_ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title("soak: sanic-chat server memory and file descriptors", fontsize=10)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = fds_ax.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    fig.tight_layout()
    path = RESULTS_DIR / "soak-resources.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def scenario_slow(bench: Bench, args: argparse.Namespace) -> str:
    users, duration = args.users or 100, args.duration or 60.0
    extra = ["--slow-share", str(args.slow_share), "--slow-delay", str(args.slow_delay)]
    chat, floor_result = paired(bench, args, users=users, duration=duration, extra=extra)
    pngs = plots("slow-consumers", chat, floor_result)
    save_summary("slow-consumers", {"sanic-chat": chat, "floor": floor_result})
    body = (
        f"{users} users over {args.transport}, {args.slow_share:.0%} of them slow readers "
        f"(a {args.slow_delay * 1000:.0f} ms pause before every read and a 4 KiB receive buffer), "
        f"think {args.think_time} s, {duration:.0f} s.\n\n"
        "| | sanic-chat fast readers | sanic-chat slow readers | floor fast | floor slow |\n"
        "|---|---:|---:|---:|---:|\n"
    )

    def part(result: dict[str, Any] | None, key: str, measure: str, stat: str) -> str:
        if not result:
            return "-"
        return _num(((result["summary"].get(key) or {}).get(measure) or {}).get(stat))

    for measure, stat, label in (
        ("ttfc_ms", "p50", "first chunk p50, ms"),
        ("ttfc_ms", "p99", "first chunk p99, ms"),
        ("full_reply_ms", "p50", "full reply p50, ms"),
        ("full_reply_ms", "p99", "full reply p99, ms"),
    ):
        slow_measure = "full_reply_ms" if measure == "full_reply_ms" else None
        body += (
            f"| {label} | {part(chat, 'fast_readers', measure, stat)} | "
            f"{part(chat, 'slow_readers', slow_measure, stat) if slow_measure else '-'} | "
            f"{part(floor_result, 'fast_readers', measure, stat)} | "
            f"{part(floor_result, 'slow_readers', slow_measure, stat) if slow_measure else '-'} |\n"
        )
    body += "\n" + comparison_table(chat, floor_result)
    drops = chat["connections"]["drops_by_code"]
    body += f"\nsanic-chat connection drops by close code: {drops or 'none'}.\n"
    body += "\n" + _images(pngs) + "\n" + _commands(args, [chat, floor_result])
    return body


def _images(paths: list[Path]) -> str:
    return "\n".join(f"![{p.stem}](results/{p.name})" for p in paths)


def _commands(args: argparse.Namespace, results: list[dict[str, Any] | None]) -> str:
    text = "Commands (the scenario, then the load generator it ran against each target):\n\n```sh\n"
    text += "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "\n"
    for r in results:
        if r:
            text += r["command"] + "\n"
    return text + "```\n"


# --------------------------------------------------------------------------- RESULTS.md


def write_results(name: str, body: str, info: dict[str, str]) -> None:
    header = (
        "# Benchmark results\n\n"
        "Written by `python -m benchmarks.run` (see `benchmarks/run.py`): the numbers of the "
        "latest run of each scenario, each next to the floor's -- the least a Sanic server can "
        "do to relay the same upstream stream over the same frames (`benchmarks/floor.py`: "
        "no database, no bus, no validation). The upstream is `sanic-chat fake-llm`: 200 ms "
        "to the first token, then 100 tokens at 50 tokens/s (2,180 ms in all). sanic-chat runs "
        "as `sanic-chat serve` (one process) on PostgreSQL with JWT auth; the fake LLM, the "
        "server and the load generator share the machine.\n\n"
        "<!-- machine -->\n<!-- /machine -->\n"
    )
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else header
    machine_text = (
        "## Machine (latest run)\n\n"
        f"- date: {info['date']}, commit {info['commit']} with {info['uncommitted']} files "
        "changed in the work tree (the code measured is the work tree's)\n"
        f"- CPU: {info['cpu']}, `nproc`: {info['nproc']}\n"
        f"- Python {info['python']}, Sanic {info['sanic']}, PostgreSQL {info['postgres']}, "
        f"Linux {info['kernel']}\n"
        f"- packages: {info.get('packages', '?')}\n"
        "- `free -h`:\n\n```\n" + info["free"] + "\n```\n"
    )
    text = _replace_section(text, "machine", machine_text)
    section = f"## Scenario `{name}` ({info['date']})\n\n{body}"
    text = _replace_section(text, f"scenario:{name}", section)
    RESULTS_MD.write_text(text)


def _replace_section(text: str, key: str, body: str) -> str:
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + "\n\n" + block + "\n"


# --------------------------------------------------------------------------- command line

SCENARIOS = {
    "seed": scenario_seed,
    "capacity": scenario_capacity,
    "soak": scenario_soak,
    "slow-consumers": scenario_slow,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0]
    )
    p.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    p.add_argument("--users", type=int, default=None, help="seed/slow: 100, soak: 300")
    p.add_argument("--duration", type=float, default=None, help="seconds (capacity: per step)")
    p.add_argument("--think-time", type=float, default=5.0)
    p.add_argument("--transport", choices=("ws", "sse", "mix"), default="ws")
    p.add_argument("--spawn-rate", type=float, default=None, help="default: users/10 per second")
    p.add_argument("--warmup", type=float, default=None, help="seconds left out of the numbers")
    p.add_argument("--gen-workers", type=int, default=0, help="0: 1 up to 300 users, else 2")
    p.add_argument("--reply-timeout", type=float, default=60.0)
    p.add_argument("--steps", default="100,200,300,400,500,600,800,1000,1200,1500")
    p.add_argument("--max-minutes", type=float, default=18.0, help="capacity: whole search")
    p.add_argument("--floor-duration", type=float, default=None, help="soak: default 5 min")
    p.add_argument("--slow-share", type=float, default=0.2)
    p.add_argument("--slow-delay", type=float, default=0.1)
    p.add_argument("--skip-floor", action="store_true")
    p.add_argument(
        "--floor-reuse-upstream",
        action="store_true",
        help="the floor pools upstream connections (sanic-chat today opens one per reply)",
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="seed, slow-consumers: turns taken with the floor"
    )
    p.add_argument("--profile", action="store_true", help="py-spy the server (seed)")
    p.add_argument(
        "--database-url",
        default=os.environ.get(
            "SANIC_CHAT_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        help="a schema of its own is made in it and dropped afterwards",
    )
    p.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for the server")
    p.add_argument(
        "--server-workers",
        type=int,
        default=1,
        help="sanic-chat serve --workers N; above 1 the workers share the Redis bus at --bus-url "
        "(the floor stays one process)",
    )
    p.add_argument(
        "--bus-url", default="redis://127.0.0.1:6379/15", help="with --server-workers > 1"
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for the bench's processes, e.g. -5 on a busy shared machine (root only)",
    )
    p.add_argument("--sample-interval", type=float, default=1.0)
    p.add_argument(
        "--wait-idle",
        type=float,
        default=60.0,
        help="before each load run, wait up to this long for other jobs to leave the CPU (0: no)",
    )
    p.add_argument("--out", default=str(BENCH / "out"))
    p.add_argument(
        "--no-results",
        action="store_true",
        help="a trial: leave RESULTS.md and benchmarks/results/ alone (plots go to --out)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global NICE
    NICE = args.nice
    out = Path(args.out) / args.scenario
    out.mkdir(parents=True, exist_ok=True)
    if args.no_results:  # a trial run: leave the published plots alone too
        global RESULTS_DIR
        RESULTS_DIR = out / "results"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    info = machine()
    bench = Bench(args, out)
    try:
        body = SCENARIOS[args.scenario](bench, args)
    finally:
        bench.close()
    if not args.no_results:
        write_results(args.scenario, body, info)
        print(f"\nwrote {RESULTS_MD.relative_to(ROOT)}", flush=True)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
