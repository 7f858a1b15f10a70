"""The ISBI 2012 report and the metrics' speed: see unet_fast/benchmark/isbi.py.

    python benchmarks/bench_isbi.py --json benchmarks/results/cpu/isbi.json
    python benchmarks/bench_isbi.py --speed --json benchmarks/results/cpu/metrics_speed.json
"""
import sys

from unet_fast.benchmark.isbi import main

if __name__ == "__main__":
    sys.exit(main())
