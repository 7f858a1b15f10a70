"""conv1x1 against F.conv2d: the contract and cases of the per-pixel GEMM ops
(tests/ops/pixel_gemm_cases.py); the launchers' own cases are in test_upconv2x2.py."""
from tests.ops.pixel_gemm_cases import PixelGemmContract


class TestConv1x1Contract(PixelGemmContract):
    op_name = "conv1x1"
