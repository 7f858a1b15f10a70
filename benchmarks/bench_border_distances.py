"""The border weight map benchmark, built on the border_distances op
(``unet_fast.benchmark.ops.border_distances``; options: --help):

    python benchmarks/bench_border_distances.py --size 512 --json PATH
"""
import sys

from unet_fast.benchmark.ops.border_distances import main

if __name__ == "__main__":
    main(sys.argv[1:])
