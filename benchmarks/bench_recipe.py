"""Cross-validation of the training recipe on ISBI 2012 under a time budget (``unet_fast.benchmark.recipe``; options: --help):

    python benchmarks/bench_recipe.py --time-budget 15m --folds 5 --json PATH -- --w0 10
    python benchmarks/bench_recipe.py --time-budget 15m --mode final --json PATH
"""
import sys

from unet_fast.benchmark.recipe import main

if __name__ == "__main__":
    sys.exit(main())
