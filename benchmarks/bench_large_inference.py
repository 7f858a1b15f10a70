"""Large-image inference: megapixels/s and peak RSS against image size, streamed (predict_large) vs in
memory (predict_tiled). The logic is in unet_fast.benchmark.large_inference; see its docstring.

    PYTHONPATH=. python benchmarks/bench_large_inference.py [--sizes 1024,4096,8192]
"""
import sys

from unet_fast.benchmark.large_inference import main

if __name__ == "__main__":
    sys.exit(main())
