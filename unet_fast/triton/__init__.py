"""Triton kernels and their launchers: a leaf layer that imports only torch and triton.

Importing this package imports nothing else; each kernel module registers its configurations with
``unet_fast.triton.aot`` when imported (``unet_fast.tools.aot_check`` imports them all).
"""
