"""``python -m unet_fast``: the ``unet-fast`` command."""
import sys

from unet_fast.cli import main

sys.exit(main())
