"""Triton kernels and their launchers. Importing this package registers every kernel
configuration with ``unet_fast.triton.aot`` for the ahead-of-time check."""
