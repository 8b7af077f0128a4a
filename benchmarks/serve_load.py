"""The serving load test: ``widedeep serve`` on loopback under fixed open-loop request rates.

    .venv/bin/python benchmarks/serve_load.py [--bundle /tmp/servedemo/bundle]
        [--server 2/8 --server 2/8/25 ...] [--rates 25,50,75,100,200,400] [--duration 10]

1. trains the Adult census demo bundle into /tmp/servedemo if no --bundle is given and it
   is not there yet (``widedeep demo --output /tmp/servedemo``);
2. runs ``widedeep bench-serve`` on it (in-process latency, the paper's Table 2);
3. for each --server setting THREADS/MAX_CONCURRENCY[/MICRO_BATCH]: starts
   ``widedeep serve BUNDLE --port FREE`` (uvicorn, one worker), waits for /v1/health, warms
   it up, then an asyncio httpx client sends /v1/score requests of --candidates rows (cut
   from the bundle's test split) at each fixed rate for --duration seconds: request i is due
   at i / rate whatever the answers do (open loop), at most --outstanding are in flight,
   and a request not answered within --client-timeout of its due time is a timeout;
4. prints one Markdown table and writes it, with the command, machine, load average, date,
   server settings, bundle and the bench-serve table, to benchmarks/SERVE_RESULTS.md.

Latency (p50, p99, max; the target's p99) is from a request's send to its answer, over the
200 answers. "p99 from due time" adds the client's own delay in sending: asyncio's timers
(about a millisecond) and, when --outstanding requests are in flight, the wait for one to
end, which open-loop testing must not hide. Errors are non-200 answers, timeouts and failed
connections. The client runs on the same cores as the server: its CPU share is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

from widedeep.bundle import load_bundle
from widedeep.serve_bench import load_average, machine, request_bodies, request_table

ROOT = Path(__file__).resolve().parent.parent
DEMO = Path("/tmp/servedemo")
HEADERS = {"content-type": "application/json"}
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Server:
    """One server setting: ``widedeep serve --threads --max-concurrency [--micro-batch]``."""

    threads: int
    max_concurrency: int
    micro_batch: int | None = None

    @classmethod
    def parse(cls, text: str) -> Server:
        parts = text.split("/")
        if not 2 <= len(parts) <= 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(
                f"expected THREADS/MAX_CONCURRENCY[/MICRO_BATCH] like 2/8, got {text!r}"
            )
        return cls(*map(int, parts))

    def flags(self) -> list[str]:
        flags = ["--threads", str(self.threads), "--max-concurrency", str(self.max_concurrency)]
        if self.micro_batch is not None:
            flags += ["--micro-batch", str(self.micro_batch)]
        return flags

    def __str__(self) -> str:
        batch = "default (512)" if self.micro_batch is None else str(self.micro_batch)
        torch_threads = max(1, (os.cpu_count() or 1) // self.threads)
        return (
            f"--threads {self.threads} --max-concurrency {self.max_concurrency}, micro_batch "
            f"{batch}, torch threads {torch_threads}, uvicorn workers 1"
        )


@dataclass(frozen=True)
class Step:
    """What one rate step measured."""

    rate: float
    sent: int
    ok: int
    non_200: int
    timeouts: int
    failed: int
    achieved: float  # 200 answers per second, from the first due time to the last answer
    p50_ms: float
    p99_ms: float
    max_ms: float
    due_p99_ms: float  # from the due time: with the client's own delay in sending
    load_1min: float
    server_cpu: float  # cores used by the server process during the step
    client_cpu: float  # cores used by this client process during the step

    @property
    def errors(self) -> int:
        return self.non_200 + self.timeouts + self.failed

    def meets(self, target_ms: float) -> bool:
        return self.errors == 0 and self.ok > 0 and self.p99_ms <= target_ms


@dataclass(frozen=True)
class Answer:
    """One request: seconds from its send and from its due time to its answer; its outcome."""

    latency: float
    from_due: float
    done: float
    outcome: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError, ValueError):
        return float("nan")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def running_server(bundle: Path, server: Server, log: Path) -> Iterator[tuple[str, int]]:
    """``widedeep serve`` on a free port, healthy; always stopped at the end."""
    port = free_port()
    command = [sys.executable, "-m", "widedeep", "serve", str(bundle), "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen([*command, *server.flags()], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}):\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer from {url}/v1/health in 60 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def step(
    client: httpx.AsyncClient,
    bodies: list[bytes],
    rate: float,
    duration: float,
    outstanding: int,
    timeout: float,
    server_pid: int,
) -> Step:
    """``rate * duration`` requests, request i due at ``i / rate``, open loop."""
    n = max(1, round(rate * duration))
    slots = asyncio.Semaphore(outstanding)
    load, server_before = os.getloadavg()[0], cpu_seconds(server_pid)
    client_before = own_cpu_seconds()
    start = time.perf_counter() + 0.05

    async def send(i: int) -> Answer:
        due = start + i / rate
        async with slots:  # no cancellation: a cancelled httpx request can leak its connection
            sent = time.perf_counter()
            left = timeout - (sent - due)
            try:
                if left <= 0:
                    raise httpx.PoolTimeout("waited for a free slot past the timeout")
                response = await client.post(
                    "/v1/score", content=bodies[i % len(bodies)], timeout=left
                )
                outcome = "ok" if response.status_code == 200 else "non_200"
            except httpx.TimeoutException:
                outcome = "timeout"
            except httpx.HTTPError:
                outcome = "failed"
        done = time.perf_counter()
        if done - due > timeout:  # httpx times each phase: a late answer is a timeout too
            outcome = "timeout"
        return Answer(done - sent, done - due, done, outcome)

    tasks = []
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i)))
    answers = await asyncio.gather(*tasks)
    wall = max(a.done for a in answers) - start
    ok = [a for a in answers if a.outcome == "ok"]
    ms, due_ms = (np.array([getattr(a, k) for a in ok]) * 1e3 for k in ("latency", "from_due"))
    count = {k: sum(a.outcome == k for a in answers) for k in ("non_200", "timeout", "failed")}
    return Step(
        rate=rate,
        sent=n,
        ok=len(ok),
        non_200=count["non_200"],
        timeouts=count["timeout"],
        failed=count["failed"],
        achieved=len(ok) / wall,
        p50_ms=float(np.percentile(ms, 50)) if len(ms) else math.nan,
        p99_ms=float(np.percentile(ms, 99)) if len(ms) else math.nan,
        max_ms=float(ms.max()) if len(ms) else math.nan,
        due_p99_ms=float(np.percentile(due_ms, 99)) if len(ms) else math.nan,
        load_1min=load,
        server_cpu=(cpu_seconds(server_pid) - server_before) / wall,
        client_cpu=(own_cpu_seconds() - client_before) / wall,
    )


async def load_test(
    url: str, pid: int, bodies: list[bytes], args: argparse.Namespace
) -> list[Step]:
    limits = httpx.Limits(max_connections=args.outstanding, max_keepalive_connections=None)
    async with httpx.AsyncClient(
        base_url=url, headers=HEADERS, limits=limits, timeout=args.client_timeout
    ) as client:
        for i in range(args.warmup):  # one at a time: compiles, caches, opens a connection
            (await client.post("/v1/score", content=bodies[i % len(bodies)])).raise_for_status()
        steps = []
        for rate in args.rates:
            await asyncio.sleep(args.pause)  # the previous step's queue drains
            result = await step(
                client, bodies, rate, args.duration, args.outstanding, args.client_timeout, pid
            )
            print(row(result, args.target_p99_ms), flush=True)
            steps.append(result)
        return steps


HEADER = (
    "| rate req/s | sent | achieved req/s | p50 ms | p99 ms | max ms | p99 ms from due time "
    "| errors (non-200 / timeout / failed) | error rate | server CPU cores | client CPU cores "
    "| load avg 1 min | p99 <= {target:g} ms, 0 errors |\n"
    "|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|:---:|"
)


def row(s: Step, target_ms: float) -> str:
    return (
        f"| {s.rate:g} | {s.sent} | {s.achieved:.1f} | {s.p50_ms:.2f} | {s.p99_ms:.2f} "
        f"| {s.max_ms:.2f} | {s.due_p99_ms:.2f} | {s.non_200} / {s.timeouts} / {s.failed} "
        f"| {s.errors / s.sent:.1%} | {s.server_cpu:.2f} | {s.client_cpu:.2f} "
        f"| {s.load_1min:.2f} | {'yes' if s.meets(target_ms) else 'no'} |"
    )


def bench_section(output: str, bundle: Path, requests: int) -> str:
    """bench-serve's output in Markdown: its header lines as text, then its table."""
    lines = output.strip().splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    header = "\n".join(line for line in lines[:at] if line.strip())
    table = "\n".join(lines[at:])
    command = f"widedeep bench-serve {bundle} --requests {requests}"
    return f"Command: `{command}`\n\n```text\n{header}\n```\n\n{table}\n"


def meeting(steps: list[Step], target_ms: float) -> str:
    """The rates that met the target, the highest, and any lower rate that missed it."""
    met = [s.rate for s in steps if s.meets(target_ms)]
    if not met:
        return f"No rate met p99 <= {target_ms:g} ms with 0 errors."
    missed = [
        f"{s.rate:g} (p99 {s.p99_ms:.2f} ms, {s.errors} errors)"
        for s in steps
        if s.rate < max(met) and not s.meets(target_ms)
    ]
    return (
        f"Met p99 <= {target_ms:g} ms with 0 errors at {', '.join(f'{r:g}' for r in met)} "
        f"req/s; highest {max(met):g} req/s."
        + (f" Lower rates that missed: {'; '.join(missed)}." if missed else "")
    )


def demo_bundle() -> Path:
    """The Adult census demo bundle in /tmp/servedemo, trained if it is not there."""
    bundle = DEMO / "bundle"
    if not (bundle / "manifest.json").exists():
        print(f"training the demo bundle: widedeep demo --output {DEMO}", flush=True)
        command = [sys.executable, "-m", "widedeep", "demo", "--output", str(DEMO)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="default: the Adult demo in /tmp/servedemo")
    parser.add_argument(
        "--server",
        type=Server.parse,
        action="append",
        metavar="THREADS/MAX_CONCURRENCY[/MICRO_BATCH]",
        help="a server setting to test (repeatable; default 2/8)",
    )
    parser.add_argument("--rates", default="25,50,75,100,200,400", help="requests/s, one step each")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate step")
    parser.add_argument("--candidates", type=int, default=50, help="rows per request")
    parser.add_argument("--outstanding", type=int, default=64, help="requests in flight, most")
    parser.add_argument("--client-timeout", type=float, default=2.0, help="seconds per request")
    parser.add_argument("--warmup", type=int, default=100, help="requests before the steps")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between steps")
    parser.add_argument("--target-p99-ms", type=float, default=14.0)
    parser.add_argument("--bench-requests", type=int, default=200, help="for bench-serve")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "SERVE_RESULTS.md")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    servers: list[Server] = args.server or [Server(2, 8)]
    logging.getLogger("httpx").setLevel(logging.WARNING)

    bundle = args.bundle or demo_bundle()
    load_before = load_average()
    print(f"bench-serve on {bundle} ...", flush=True)
    bench_command = [
        sys.executable, "-m", "widedeep", "bench-serve", str(bundle),
        "--requests", str(args.bench_requests),
    ]  # fmt: skip
    bench = subprocess.run(bench_command, check=True, capture_output=True, text=True).stdout
    print(bench, flush=True)

    table = request_table(load_bundle(bundle))
    bodies = request_bodies(table, args.candidates, 64)
    target = args.target_p99_ms
    sections, best = [], []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        for server in servers:
            print(f"\nserver: {server}", flush=True)
            print(HEADER.format(target=target), flush=True)
            with running_server(bundle, server, Path(scratch) / "server.log") as (url, pid):
                steps = asyncio.run(load_test(url, pid, bodies, args))
            verdict = meeting(steps, target)
            met = [s.rate for s in steps if s.meets(target)]
            best.append((max(met) if met else 0.0, server))
            print(verdict, flush=True)
            lines = [HEADER.format(target=target), *(row(s, target) for s in steps)]
            sections.append(f"### Server {server}\n\n" + "\n".join(lines) + f"\n\n{verdict}\n")

    rate, chosen = max(best, key=lambda b: b[0])
    summary = (
        f"**Highest rate meeting the target: {rate:g} req/s** of {args.candidates}-row "
        f"/v1/score requests at p99 <= {target:g} ms with 0 errors, with `widedeep serve "
        f"{bundle} {' '.join(chosen.flags())}` (one {args.duration:g} s step per rate: see "
        "below for the rates that missed)"
        if rate
        else f"**No setting met p99 <= {target:g} ms with 0 errors at any rate tried.**"
    )
    print("\n" + summary)
    command = ("python benchmarks/serve_load.py " + " ".join(sys.argv[1:])).strip()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    args.results.write_text(
        "# Serving results: /v1/score latency\n\n"
        f"Command: `{command}`  \n"
        f"Date: {date}  \n"
        f"Machine: {machine()}  \n"
        f"Load average (1, 5, 15 min) before the run: {load_before}; after: {load_average()} "
        "(other processes shared the cores: rerun in a quiet window to compare)  \n"
        f"Bundle: `{bundle}` ({args.candidates} rows per request from {table.source})  \n"
        f"Client: httpx asyncio on the same machine, open loop, {args.duration:g} s per rate, "
        f"at most {args.outstanding} in flight, {args.client_timeout:g} s timeout from the due "
        f"time, {args.warmup} warm-up requests per server; latency from the send to the "
        "answer over the 200 answers (and p99 from the due time, with the client's delay)  \n"
        f"Target: p99 <= {target:g} ms and 0 errors\n\n"
        f"{summary}\n\n"
        "## Load test over loopback (uvicorn, one worker)\n\n"
        + "\n".join(sections)
        + "\n## In-process: `widedeep bench-serve` (no sockets, one request at a time)\n\n"
        + bench_section(bench, bundle, args.bench_requests)
    )
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
