"""A small Triton matmul used by tests/test_aot_check.py to exercise the ahead-of-time check."""
import triton
import triton.language as tl

from unet_fast.triton.aot import KernelConfig


@triton.jit
def tile_matmul(a, b, c, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TF32: tl.constexpr):
    rm, rn, rk = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k in range(0, K, BLOCK_K):
        x = tl.load(a + rm[:, None] * K + (k + rk)[None, :])
        y = tl.load(b + (k + rk)[:, None] * BLOCK_N + rn[None, :])
        acc = tl.dot(x, y, acc, input_precision="tf32" if TF32 else "ieee")
    tl.store(c + rm[:, None] * BLOCK_N + rn[None, :], acc)


def config(dtype: str, precision: str, block_m: int = 64, num_warps: int = 4) -> KernelConfig:
    return KernelConfig(
        "tile_matmul", tile_matmul,
        {"a": f"*{dtype}", "b": f"*{dtype}", "c": "*fp32", "K": "i32",
         "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "TF32": "constexpr"},
        {"BLOCK_M": block_m, "BLOCK_N": 64, "BLOCK_K": 32, "TF32": precision == "tf32"},
        precision=precision, block_m=block_m, num_warps=num_warps,
    )
