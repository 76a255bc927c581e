"""A job for the warm worker's tests: it reports the process state a forked child took on, or misbehaves on request.

``report OUT`` writes JSON (cwd, environment variable PROBE, umask, file-size limit, thread counts, pid)
to OUT; ``exit N``, ``sysexit MESSAGE`` and ``raise`` end the job those ways; ``echo TEXT`` writes TEXT to
stdout and stderr; ``kill SIGNAL`` sends the job a signal; ``sleep PIDFILE`` writes its pid and sleeps.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time


def main(argv: list[str]) -> int | None:
    action, *rest = argv
    if action == "report":
        import torch
        from threadpoolctl import threadpool_info

        mask = os.umask(0)
        os.umask(mask)
        state = {
            "cwd": os.getcwd(),
            "probe": os.environ.get("PROBE"),
            "umask": mask,
            "fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[0],
            "torch_threads": torch.get_num_threads(),
            "blas_threads": sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}),
            "pid": os.getpid(),
            "argv0": sys.argv[0],
        }
        with open(rest[0], "w") as f:
            json.dump(state, f)
        return 0
    if action == "exit":
        return int(rest[0])
    if action == "sysexit":
        raise SystemExit(rest[0])
    if action == "raise":
        raise RuntimeError("probe failed on purpose")
    if action == "echo":
        print(f"out: {rest[0]}")
        print(f"err: {rest[0]}", file=sys.stderr)
        return None
    if action == "kill":
        os.kill(os.getpid(), getattr(signal, rest[0]))
        return 0
    if action == "sleep":
        with open(rest[0] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(rest[0] + ".tmp", rest[0])
        time.sleep(120)
        return 0
    raise ValueError(f"unknown probe action {action!r}")
