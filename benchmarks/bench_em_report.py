"""The ISBI 2012 report and the metrics' speed: see unet_fast/benchmark/em_report.py.

    python benchmarks/bench_em_report.py --json benchmarks/results/cpu/em_report.json
    python benchmarks/bench_em_report.py --speed --json benchmarks/results/cpu/metrics_speed.json
"""
import sys

from unet_fast.benchmark.em_report import main

if __name__ == "__main__":
    sys.exit(main())
