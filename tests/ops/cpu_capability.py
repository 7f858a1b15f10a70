"""Runs a script in a fresh interpreter under a chosen ATen CPU capability: the elastic warp's AVX2
row loops follow ATEN_CPU_CAPABILITY, which a process reads once, and a crash there fails the
calling test instead of killing pytest."""
import os
import subprocess
import sys


def run_with_capability(script: str, args, capability: str | None) -> subprocess.CompletedProcess:
    """``python -c script *args`` with ATEN_CPU_CAPABILITY=capability (None: the machine's best);
    output captured, never raising on the exit status."""
    env = dict(os.environ)
    if capability is None:
        env.pop("ATEN_CPU_CAPABILITY", None)
    else:
        env["ATEN_CPU_CAPABILITY"] = capability
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)
