"""``python -m unet_fast.benchmark``: the same as ``unet-fast bench``."""
import sys

from unet_fast.benchmark import main

sys.exit(main(sys.argv[1:]))
