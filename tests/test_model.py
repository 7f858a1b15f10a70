"""unet_fast.UNet against the reference U-Net: outputs, gradients, training steps, state dicts,
conversion, export, autocast, layouts, torch.compile and the memory kept for backward."""
import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import HAS_CUDA, TRITON_DEVICE
from unet_fast import UNet, blocks
from unet_fast.memory import saved_tensor_bytes
from unet_fast.reference import UNet as ReferenceUNet
from unet_fast.shapes import level_sizes, output_size, valid_input_size

# (depth, base_channels, batch, in_channels, num_classes)
CONFIGS = [(2, 4, 1, 1, 2), (3, 8, 2, 3, 3), (4, 16, 3, 1, 5), (5, 4, 1, 3, 4)]


def _pair(seed=0, backend="torch", recompute=False, **config):
    torch.manual_seed(seed)
    reference = ReferenceUNet(**config)
    return reference, UNet.from_reference(reference, backend=backend, recompute=recompute)


def _input(model, batch=1, size=None, seed=1, device="cpu"):
    size = size or valid_input_size(1, model.depth, model.padding)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.in_channels, size, size, generator=generator).to(device)


def _grads(model, x, grad_out, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_()
    out = model(x)
    grads = torch.autograd.grad(out, [x, *model.parameters()], grad_out(out))
    return out.detach(), grads


def _fixed_grad(out):
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)


# --- parity with the reference ----------------------------------------------------------------------

@pytest.mark.parametrize("depth,base,batch,in_channels,num_classes", CONFIGS)
def test_eval_outputs_match_reference_fp32(depth, base, batch, in_channels, num_classes):
    reference, fast = _pair(depth=depth, base_channels=base, in_channels=in_channels, num_classes=num_classes)
    reference.eval(), fast.eval()
    x = _input(reference, batch)
    with torch.no_grad():
        # Same fp32 ATen convolutions in another grouping: equal up to fp32 rounding.
        torch.testing.assert_close(fast(x), reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("config", [
    dict(depth=3, base_channels=4),
    dict(depth=2, base_channels=8, in_channels=3, num_classes=4, skip_connections=False),
    dict(depth=3, base_channels=4, up_mode="bilinear"),
    dict(depth=3, base_channels=4, norm="batch"),
    dict(depth=3, base_channels=4, padding="same"),
])
def test_train_mode_outputs_and_all_gradients_match_reference(config, recompute):
    reference, fast = _pair(recompute=recompute, dropout=0.5, **config)
    x = _input(reference, batch=2)
    # Same seed before each forward: dropout draws the same mask as the reference (same RNG use).
    out_ref, grads_ref = _grads(reference, x, _fixed_grad, seed=3)
    out_fast, grads_fast = _grads(fast, x, _fixed_grad, seed=3)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-6)
    names = ["input", *(name for name, _ in reference.named_parameters())]
    for name, got, want in zip(names, grads_fast, grads_ref):
        # fp32 gradients of the same convolutions; sums over up to a few thousand terms.
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_dropout_follows_train_and_eval_modes():
    reference, fast = _pair(depth=2, base_channels=4, dropout=0.5)
    x = _input(reference)
    fast.train()
    torch.manual_seed(0)
    first = fast(x)
    second = fast(x)
    assert not torch.equal(first, second)  # a new mask per call in training
    fast.eval()
    assert torch.equal(fast(x), fast(x))


def test_optimizer_step_gives_the_same_weights():
    reference, fast = _pair(depth=3, base_channels=4, dropout=0.5)
    x = _input(reference, batch=2, size=60)
    target = torch.randint(0, 2, (2, output_size(60, 3), output_size(60, 3)))
    for model in (reference, fast):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.99)
        for step in range(2):
            torch.manual_seed(10 + step)
            loss = torch.nn.functional.cross_entropy(model(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for (name, want), got in zip(reference.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


# --- state dicts and conversion ---------------------------------------------------------------------

def test_state_dict_round_trips_both_ways():
    torch.manual_seed(0)
    reference = ReferenceUNet(depth=3, base_channels=4, norm="batch")
    fast = UNet(depth=3, base_channels=4, norm="batch")
    assert list(fast.state_dict()) == list(reference.state_dict())
    fast.load_state_dict(reference.state_dict())
    other = ReferenceUNet(depth=3, base_channels=4, norm="batch")
    other.load_state_dict(fast.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_from_reference_and_to_reference():
    reference, fast = _pair(depth=3, base_channels=4, num_classes=3, dropout=0.2)
    reference.eval()
    fast = UNet.from_reference(reference, backend="torch", recompute=True)
    assert not fast.training and fast.recompute and fast.backend == "torch"
    assert fast.config() == reference.config()
    back = fast.to_reference()
    assert type(back) is ReferenceUNet and not back.training
    for key, value in reference.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    x = _input(reference)
    assert torch.equal(back(x), reference(x))
    assert UNet.from_reference(reference.double()).head.weight.dtype == torch.float64
    with pytest.raises(TypeError, match="reference must be a unet_fast.reference.UNet"):
        UNet.from_reference(torch.nn.Conv2d(1, 1, 1))


def test_torch_export_of_the_reference_twin():
    _, fast = _pair(depth=2, base_channels=4)
    reference = fast.eval().to_reference()
    x = _input(reference)
    exported = torch.export.export(reference, (x,))
    torch.testing.assert_close(exported.module()(x), fast(x))


def test_onnx_export_of_the_reference_twin(tmp_path):
    pytest.importorskip("onnx")
    _, fast = _pair(depth=2, base_channels=4)
    path = tmp_path / "unet.onnx"
    torch.onnx.export(fast.eval().to_reference(), (_input(fast),), str(path))
    assert path.stat().st_size > 0


def test_backend_summary_names_fused_and_fallback_layers():
    summary = UNet(depth=3, base_channels=4, up_mode="bilinear", backend="torch").backend_summary()
    assert summary == {
        "encoder.0": "fused (torch)", "encoder.1": "fused (torch)", "encoder.2": "fused (torch)",
        "decoder.0": "reference (up_mode='bilinear')", "decoder.1": "reference (up_mode='bilinear')",
        "head": "fused (torch)",
    }
    assert UNet(depth=2, base_channels=4, norm="instance", backend="torch").backend_summary() == {
        "encoder.0": "reference (norm='instance')", "encoder.1": "reference (norm='instance')",
        "decoder.0": "reference (norm='instance')", "head": "fused (torch)",
    }


def test_bad_arguments_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        UNet(depth=2, base_channels=4, backend="cuda")
    with pytest.raises(TypeError, match="recompute must be a bool"):
        UNet(depth=2, base_channels=4, recompute="yes")
    with pytest.raises(ValueError, match="depth must be"):
        UNet(depth=1)
    model = UNet(depth=2, base_channels=4)
    with pytest.raises(TypeError, match="does not match the model's parameter dtype"):
        model(_input(model).double())
    with pytest.raises(ValueError, match="input height"):
        model(torch.randn(1, 1, 15, 16))
    with pytest.raises(ValueError, match="input channel"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="input is on meta but the model's parameters are on cpu"):
        model(_input(model).to("meta"))


def test_backend_summary_reports_a_backend_that_cannot_run_instead_of_raising(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    summary = UNet(depth=2, base_channels=4, backend="triton").backend_summary("cpu")
    assert set(summary) == {"encoder.0", "encoder.1", "decoder.0", "head"}
    assert all(v.startswith("unavailable (") and "triton" in v for v in summary.values()), summary


# --- precision, layouts, compile --------------------------------------------------------------------

def test_bf16_autocast_on_cpu_matches_reference_within_its_own_error():
    reference, fast = _pair(depth=3, base_channels=8)
    reference.eval(), fast.eval()
    x = _input(reference, batch=2)
    with torch.no_grad():
        exact = reference.double()(x.double())
        reference.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_ref, out_fast = reference(x), fast(x)
    assert out_fast.dtype == out_ref.dtype == torch.bfloat16
    own_error = (out_ref.double() - exact).abs().max().item()
    # At most twice the reference's own bf16 error (same bf16 convolutions; the bound allows reordering).
    assert (out_fast.double() - exact).abs().max().item() <= 2 * own_error
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast.train()(x.requires_grad_())
    out.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0 for p in fast.parameters())


def test_channels_last_input_gives_channels_last_output():
    reference, fast = _pair(depth=3, base_channels=4)
    reference.eval(), fast.eval()
    x = _input(reference, batch=2).to(memory_format=torch.channels_last)
    out = fast(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference(x), rtol=1e-5, atol=1e-6)


def test_torch_compile_fullgraph_forward_and_backward():
    reference, fast = _pair(depth=2, base_channels=4, dropout=0.0)
    x = _input(reference)
    # aot_eager traces forward and backward (the custom ops through their fake kernels) like inductor
    # would, without inductor's CPU code generation time; fullgraph=True fails on any graph break.
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, reference(x), rtol=1e-5, atol=1e-6)
    out.sum().backward()
    reference(x).sum().backward()
    for got, want in zip(fast.parameters(), reference.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)


# --- memory kept for backward -----------------------------------------------------------------------

def _saved_bytes(model, x, autocast=False):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return saved_tensor_bytes(lambda: model(x), exclude=model.parameters())


def _relu_output_bytes(base, size, element_bytes, recompute, depth=5):
    """image + each block's ReLU outputs (y2 only with recompute) for a 1-channel input: the design limit."""
    total = size * size
    for level, (encoder_out, decoder_out) in enumerate(level_sizes(size, depth)):
        channels = base * 2**level
        total += channels * encoder_out**2 + (0 if recompute else channels * (encoder_out + 2) ** 2)
        if level < depth - 1:
            total += channels * decoder_out**2 + (0 if recompute else channels * (decoder_out + 2) ** 2)
    return total * element_bytes


PAPER_LIMITS = {(False, False): 0.65, (True, False): 0.52, (False, True): 0.35, (True, True): 0.27}


@pytest.mark.parametrize("autocast,recompute", list(PAPER_LIMITS))
def test_saved_bytes_of_the_paper_model_at_572(autocast, recompute):
    # The paper's model at full size costs ~300 GFLOP per forward on CPU: measured on fake tensors
    # (real autograd, real saved_tensors_hooks, no data), which test_fake_measurement_equals_real
    # validates against real tensors. Training mode: dropout's mask and output are counted too.
    with FakeTensorMode():
        reference, fast = _pair(recompute=recompute)
        x = torch.randn(1, 1, 572, 572)
        ratio = _saved_bytes(fast, x, autocast) / _saved_bytes(reference, x, autocast)
        fast.eval()
        eval_bytes = _saved_bytes(fast, x, autocast)
    assert ratio <= PAPER_LIMITS[autocast, recompute]
    # In eval mode (no dropout) exactly the image and the blocks' ReLU outputs are kept.
    assert eval_bytes == _relu_output_bytes(64, 572, 2 if autocast else 4, recompute)


@pytest.mark.parametrize("autocast", [False, True])
def test_fake_measurement_equals_real(autocast):
    counts = []
    for mode in (contextlib.nullcontext(), FakeTensorMode()):
        with mode:
            reference, fast = _pair(base_channels=8)
            x = torch.randn(1, 1, 188, 188)
            counts.append((_saved_bytes(reference, x, autocast), _saved_bytes(fast, x, autocast)))
    assert counts[0] == counts[1]
    assert counts[0][1] < counts[0][0]


# --- Triton backend (interpreter on CPU, or CUDA) ---------------------------------------------------

@pytest.mark.parametrize("recompute,channels_last", [(False, False), (True, True)])
def test_triton_backend_matches_reference(recompute, channels_last):
    reference, fast = _pair(backend="triton", recompute=recompute, depth=3, base_channels=4, dropout=0.0)
    reference.to(TRITON_DEVICE), fast.to(TRITON_DEVICE)
    x = _input(reference, device=TRITON_DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out_ref, grads_ref = _grads(reference, x, _fixed_grad_on(x.device))
    out_fast, grads_fast = _grads(fast, x, _fixed_grad_on(x.device))
    assert out_fast.is_contiguous(memory_format=torch.channels_last)
    # fp32 with IEEE dots (TF32 off on CPU); reductions in another order than PyTorch's.
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-4, atol=1e-5)
    for name, got, want in zip(["input", *dict(reference.named_parameters())], grads_fast, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


def _fixed_grad_on(device):
    return lambda out: _fixed_grad(out).to(device)


def test_triton_backend_saves_what_the_torch_backend_saves():
    reference, fast = _pair(backend="triton", depth=3, base_channels=4)
    x = _input(reference, device=TRITON_DEVICE)
    fast.to(TRITON_DEVICE)
    triton_bytes = _saved_bytes(fast, x)
    fast.backend = "torch"
    assert triton_bytes == _saved_bytes(fast, x)


# --- GPU --------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_triton_matches_reference(pinned_conv_precision, dtype):
    # fp32 is IEEE fp32 here (pinned_conv_precision), as in the op tests: torch >= 2.9 defaults to TF32
    reference, fast = _pair(backend="triton", depth=4, base_channels=16, dropout=0.0)
    reference.cuda(), fast.cuda()
    x = _input(reference, batch=2, device="cuda")
    exact_ref = reference.double()
    exact_out, exact_grads = _grads(exact_ref, x.double(), lambda out: _fixed_grad(out).cuda())
    reference.float()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    with autocast:
        ref_out, ref_grads = _grads(reference, x, lambda out: _fixed_grad(out).to(out).cuda())
    with autocast:
        out, grads = _grads(fast, x, lambda out: _fixed_grad(out).to(out).cuda())
    for got, theirs, exact in zip([out, *grads], [ref_out, *ref_grads], [exact_out, *exact_grads]):
        own_error = (theirs.double() - exact).abs().max().item()
        # Within twice PyTorch's own error in this precision, plus a floor of an fp32 ulp of the scale.
        assert (got.double() - exact).abs().max().item() <= 2 * own_error + 1e-6 * exact.abs().max().item()


@pytest.mark.gpu
def test_cuda_saved_bytes_of_the_paper_model():
    reference, fast = _pair(backend="triton")
    reference.cuda(), fast.cuda()
    x = torch.randn(1, 1, 572, 572, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ratio = (saved_tensor_bytes(lambda: fast(x), fast.parameters())
                 / saved_tensor_bytes(lambda: reference(x), reference.parameters()))
    assert ratio <= 0.52


def test_no_cuda_means_auto_is_torch():
    if HAS_CUDA:
        pytest.skip("checks the CPU default")
    assert set(UNet(depth=2, base_channels=4).backend_summary().values()) == {"fused (torch)"}


def test_auto_backend_reaches_the_per_shape_cudnn_choice_inside_the_model(monkeypatch):
    import itertools

    import unet_fast.model as model_module
    from unet_fast.ops import backend

    # On a GPU "auto" keeps "auto" for the blocks; make the interpreter take the same route.
    monkeypatch.setattr(model_module, "block_backend", lambda backend, device, dtype: "auto")
    monkeypatch.delenv("UNET_FAST_AUTOTUNE", raising=False)
    timings = itertools.cycle([2.0, 1.0])  # Triton is timed first, then cuDNN/aten: aten wins
    reference, fast = _pair(depth=2, base_channels=4, dropout=0.0)
    reference.to(TRITON_DEVICE), fast.to(TRITON_DEVICE)
    x = _input(reference, device=TRITON_DEVICE)
    out_ref, grads_ref = _grads(reference, x, _fixed_grad_on(x.device))
    with backend.fresh_choices(timer=lambda fn: (fn(), next(timings))[1]):
        out_fast, grads_fast = _grads(fast, x, _fixed_grad_on(x.device))
        picks = backend.chosen_backends()
    # 2 encoder levels + 1 decoder stage, two 3x3 convs each, timed forward and backward per shape.
    assert {key[0] for key in picks} == {"forward", "backward"} and set(picks.values()) == {"aten"}
    assert len([key for key in picks if key[0] == "forward"]) == 6
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads_fast, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_backend_summary_reports_the_per_shape_choice_after_it_is_made(monkeypatch):
    import itertools

    import unet_fast.model as model_module
    from unet_fast.ops import backend

    monkeypatch.setattr(model_module, "block_backend", lambda backend, device, dtype: "auto")
    monkeypatch.delenv("UNET_FAST_AUTOTUNE", raising=False)
    _, fast = _pair(depth=2, base_channels=4, dropout=0.0)
    fast.to(TRITON_DEVICE)
    before = fast.backend_summary()
    assert all(before[name].startswith("auto (not chosen yet") for name in ("encoder.0", "encoder.1", "decoder.0"))
    # Triton is timed first, then aten: aten wins every choice of the first forward, Triton every later one
    with backend.fresh_choices(timer=lambda fn, times=itertools.cycle([2.0, 1.0]): (fn(), next(times))[1]):
        with torch.no_grad():
            fast(_input(fast, device=TRITON_DEVICE))
        summary = fast.backend_summary()
    assert {summary[name] for name in ("encoder.0", "encoder.1", "decoder.0")} == {"fused (cudnn)"}
    assert summary["head"] == before["head"]  # the 1x1 head has no per-shape choice
    with backend.fresh_choices(timer=lambda fn, times=itertools.cycle([1.0, 2.0]): (fn(), next(times))[1]):
        fast(_input(fast, device=TRITON_DEVICE)).sum().backward()
    mixed = fast.backend_summary()
    assert {mixed[name] for name in ("encoder.0", "encoder.1", "decoder.0")} == {
        "fused (backward triton, forward cudnn+triton)"}


# --- the block ops themselves -----------------------------------------------------------------------

@pytest.mark.parametrize("recompute", [False, True])
def test_block_ops_pass_opcheck(recompute):
    torch.manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape).requires_grad_()

    image, pooled_source = leaf(1, 2, 14, 14), leaf(1, 3, 20, 20)
    pooled = torch.nn.functional.max_pool2d(pooled_source, 2).detach().requires_grad_()
    w1, b1, w2, b2 = leaf(4, 2, 3, 3), leaf(4), leaf(4, 4, 3, 3), leaf(4)
    ops = torch.ops.unet_fast
    torch.library.opcheck(ops._encoder_block.default, (image, None, w1, b1, w2, b2, True, recompute, "torch"))
    w1p = leaf(4, 3, 3, 3)
    torch.library.opcheck(ops._encoder_block.default, (pooled_source, pooled, w1p, None, w2, b2, False, recompute,
                                                       "torch"))
    low, skip = leaf(1, 6, 5, 5), leaf(1, 3, 12, 12)
    up_w, up_b, dw1, dw2 = leaf(6, 3, 2, 2), leaf(3), leaf(3, 6, 3, 3), leaf(3, 3, 3, 3)
    torch.library.opcheck(ops._decoder_block.default, (low, skip, up_w, up_b, dw1, leaf(3), dw2, leaf(3), recompute,
                                                       "torch"))
    torch.library.opcheck(ops._head.default, (skip, leaf(2, 3, 1, 1), leaf(2), "torch"))


@pytest.mark.parametrize("recompute", [False, True])
def test_eager_twins_equal_the_ops_and_skip_the_dispatcher(recompute):
    torch.manual_seed(0)
    image, w1, b1, w2, b2 = (torch.randn(*s) for s in ((1, 2, 14, 14), (4, 2, 3, 3), (4,), (4, 4, 3, 3), (4,)))
    low, skip, up_w, up_b = (torch.randn(*s) for s in ((1, 6, 5, 5), (1, 3, 12, 12), (6, 3, 2, 2), (3,)))
    dw1, db1, dw2, db2 = (torch.randn(*s) for s in ((3, 6, 3, 3), (3,), (3, 3, 3, 3), (3,)))
    cases = [(blocks.run_encoder_block, torch.ops.unet_fast._encoder_block, (image, None, w1, b1, w2, b2, True),
              (recompute, "torch")),
             (blocks.run_decoder_block, torch.ops.unet_fast._decoder_block, (low, skip, up_w, up_b, dw1, db1, dw2, db2),
              (recompute, "torch")),
             (blocks.run_head, torch.ops.unet_fast._head, (skip, torch.randn(2, 3, 1, 1), torch.randn(2)), ("torch",))]
    for twin, op, tensors, flags in cases:
        results = []
        for run in (twin, op):
            leaves = [t if not isinstance(t, torch.Tensor) else t.clone().requires_grad_() for t in tensors]
            with _DispatchedOps() as seen:
                outputs = run(*leaves, *flags)
                outputs = outputs if isinstance(outputs, tuple) else (outputs,)
                loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outputs if o.numel())
                loss.backward()
            results.append(([o.detach() for o in outputs], [t.grad for t in leaves if isinstance(t, torch.Tensor)],
                            seen.names))
        (twin_out, twin_grads, twin_ops), (op_out, op_grads, op_ops) = results
        for got, want in zip(twin_out + twin_grads, op_out + op_grads):
            assert torch.equal(got, want)  # the same kernels in the same order: bitwise equal
        assert any(name.startswith(("unet_fast::_encoder", "unet_fast::_decoder", "unet_fast::_head")) for name in op_ops)
        assert not any(name.startswith(("unet_fast::_encoder", "unet_fast::_decoder", "unet_fast::_head"))
                       for name in twin_ops)


class _DispatchedOps(TorchDispatchMode):
    """Records the name of every operator that reaches the dispatcher's Python mode."""

    def __enter__(self):
        self.names = []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def test_triton_backend_under_fp16_autocast_within_twice_pytorchs_error():
    # fp16, not bf16: the Triton interpreter computes bf16 wrongly (tests/conftest.py).
    reference, fast = _pair(backend="triton", depth=3, base_channels=4, dropout=0.0)
    reference.to(TRITON_DEVICE), fast.to(TRITON_DEVICE)
    x = _input(reference, device=TRITON_DEVICE)
    exact_out, exact_grads = _grads(reference.double(), x.double(), lambda out: _fixed_grad(out).to(out))
    reference.float()
    with torch.autocast(x.device.type, dtype=torch.float16):
        ref_out, ref_grads = _grads(reference, x, lambda out: _fixed_grad(out).to(out))
        out, grads = _grads(fast, x, lambda out: _fixed_grad(out).to(out))
    assert out.dtype == torch.float16 and all(g.dtype == torch.float32 for g in grads)
    for name, got, theirs, exact in zip(["output", "input", *dict(reference.named_parameters())],
                                        [out, *grads], [ref_out, *ref_grads], [exact_out, *exact_grads]):
        scale = exact.abs().max().item()
        own_error = (theirs.double() - exact).abs().max().item()
        # Twice PyTorch's own fp16 error, floored at an fp16 ulp of the tensor's scale.
        assert (got.double() - exact).abs().max().item() <= 2 * own_error + scale * 2**-10, name
