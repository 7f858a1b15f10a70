"""The elastic_warp benchmark, image + label pairs (``unet_fast.benchmark.ops.elastic_warp``; options: --help):

    python benchmarks/bench_elastic_warp.py --device cpu --sizes 512 --batches 1 --json PATH
"""
from unet_fast.benchmark.ops.elastic_warp import main

if __name__ == "__main__":
    main()
