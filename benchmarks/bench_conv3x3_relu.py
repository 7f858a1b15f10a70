"""The conv3x3_relu benchmark (``unet_fast.benchmark.ops.conv3x3_relu``; options: --help):

    python benchmarks/bench_conv3x3_relu.py --dtype bf16 --batch 1 --batch 8 --json PATH
"""
import sys

from unet_fast.benchmark.ops.conv3x3_relu import main

if __name__ == "__main__":
    sys.exit(main())
