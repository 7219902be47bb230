"""Which threads of a running process use its CPU: CPU seconds per thread role over a window.

    .venv/bin/python benchmarks/thread_cpu.py PID [--seconds 15] [--py-spy /path/to/py-spy]

Reads each thread's user + system time from /proc/PID/task/*/stat at the start and end of the window. Roles come
from one `py-spy dump` at the start (py-spy is on PyPI; install it outside the project's venv): a thread is named by
its Python thread name, or by what its stack shows (`consumer worker` for the bus consumers' handler threads,
`thread pool` for anyio's, `event loop` for uvicorn's); without py-spy every thread but the main one is "thread".

Why: a py-spy `--gil` profile attributes samples to the main thread while no thread holds the GIL, so it cannot
say how the CPU splits between the event loop and the worker threads; the kernel's per-thread accounting can. Run
it beside a load, e.g. `benchmarks/e2e_widget.py --levels 32 --requests 3000` and the `serve` process's PID.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

ROLES = (("ConcurrentConsumer._work", "consumer worker"), ("worker_thread", "thread pool"),
         ("WorkerThread", "thread pool"), ("Server.run", "event loop"))


def thread_cpu(pid: int) -> dict[str, int]:
    """Clock ticks of user + system time per thread id."""
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        ticks[tid] = int(fields[11]) + int(fields[12])
    return ticks


def roles(dump: str) -> dict[str, str]:
    """Thread id -> role, from a `py-spy dump` (the thread's name, or a role its stack shows)."""
    found = {}
    for block in re.split(r"\n(?=Thread )", dump):
        head = re.match(r'Thread (\d+) \(\w+\): "(.*)"', block)
        if head:
            role = next((name for marker, name in ROLES if marker in block), re.sub(r"\d+", "N", head[2]))
            found[head[1]] = role
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pid", type=int)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy to name the threads' roles")
    args = parser.parse_args()
    named = {}
    if args.py_spy:
        named = roles(subprocess.run([args.py_spy, "dump", "-p", str(args.pid)], capture_output=True, text=True,
                                     check=True).stdout)
    before = thread_cpu(args.pid)
    time.sleep(args.seconds)
    after = thread_cpu(args.pid)
    cpu: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for tid, ticks in after.items():
        role = named.get(tid) or ("main" if tid == str(args.pid) else "thread")
        cpu[role] += ticks - before.get(tid, 0)
        threads[role] += 1
    hz = os.sysconf("SC_CLK_TCK")
    print(f"CPU by thread role over {args.seconds:g} s (pid {args.pid}):")
    for role, ticks in cpu.most_common():
        print(f"  {role:28s} {threads[role]:4d} threads  {ticks / hz:7.2f} s")
    print(f"  {'total':28s} {sum(threads.values()):4d} threads  {sum(cpu.values()) / hz:7.2f} s")


if __name__ == "__main__":
    main()
