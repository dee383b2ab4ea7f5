"""The oneDNN linear kernel: the same fp32 numbers as F.linear, only where it is safe, scoped."""

import pytest
import torch
import torch.nn.functional as F

from calmrl.models import compat, linear_kernel
from calmrl.models.linear_kernel import (
    onednn_available,
    onednn_linear,
    resolve_linear_kernel,
    use_linear_kernel,
)

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN")
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("vendor", "flags", "device", "expected"),
    [
        ("AuthenticAMD", {"avx2", "avx512f"}, CPU, "onednn"),
        ("AuthenticAMD", {"avx2"}, CPU, "torch"),  # unmeasured: keep the default
        ("GenuineIntel", {"avx2", "avx512f", "amx_bf16"}, CPU, "torch"),
        ("AuthenticAMD", {"avx2", "avx512f"}, torch.device("cuda"), "torch"),
    ],
)
def test_auto_picks_onednn_only_on_amd_cpus_with_avx512(
    monkeypatch, vendor, flags, device, expected
):
    monkeypatch.setattr(linear_kernel, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(linear_kernel, "cpu_flags", lambda: flags)
    monkeypatch.setattr(linear_kernel, "onednn_available", lambda: True)
    assert resolve_linear_kernel("auto", device) == expected
    assert resolve_linear_kernel("torch", device) == "torch"
    assert resolve_linear_kernel("onednn", device) == "onednn"


def test_onednn_falls_back_where_pytorch_lacks_it_and_bad_names_fail(monkeypatch):
    monkeypatch.setattr(linear_kernel, "onednn_available", lambda: False)
    assert resolve_linear_kernel("onednn", CPU) == "torch"
    with pytest.raises(ValueError, match="linear_kernel: must be one of auto, torch, onednn"):
        resolve_linear_kernel("mkl", CPU)


def test_cpu_vendor_reads_proc_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f\n")
    real_open = open
    monkeypatch.setattr(
        "builtins.open", lambda path, *a, **k: real_open(info if path == "/proc/cpuinfo" else path)
    )
    assert compat.cpu_vendor() == "AuthenticAMD"
    assert compat.cpu_flags() == {"fpu", "avx2", "avx512f"}


@needs_onednn
@pytest.mark.parametrize(
    "shape", [(64, 48), (7, 48), (3, 5, 48), (1, 1, 48)], ids=["2d", "odd-rows", "3d", "one"]
)
@pytest.mark.parametrize("bias", [False, True])
def test_onednn_linear_equals_a_float64_reference_like_f_linear(shape, bias):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    weight = torch.randn(40, 48, generator=generator) * 0.1
    b = torch.randn(40, generator=generator) if bias else None
    reference = F.linear(x.double(), weight.double(), None if b is None else b.double())
    with torch.no_grad():
        got = onednn_linear(x, weight, b)
    assert got.dtype == torch.float32 and got.shape == reference.shape
    torch.testing.assert_close(got.double(), reference, atol=1e-5, rtol=1e-5)
    # The error is the size of F.linear's own: float reassociation, no reduced precision.
    default_error = (F.linear(x, weight, b).double() - reference).abs().max()
    assert (got.double() - reference).abs().max() <= 10 * default_error + 1e-6


@needs_onednn
def test_onednn_linear_takes_non_contiguous_inputs():
    x = torch.randn(48, 9).t()
    weight = torch.randn(40, 48)
    with torch.no_grad():
        torch.testing.assert_close(onednn_linear(x, weight), F.linear(x, weight))


def test_onednn_linear_leaves_autograd_autocast_and_other_dtypes_to_f_linear(monkeypatch):
    """The oneDNN op has no backward (gradients would silently be missing) and autocast
    does not see it, so those calls must take F.linear."""
    calls = []
    monkeypatch.setattr(
        torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a), raising=False
    )
    x = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(3, 8, requires_grad=True)
    onednn_linear(x, weight).sum().backward()  # grad enabled
    torch.testing.assert_close(x.grad, weight.detach().sum(0).expand(4, 8))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn_linear(x, weight).dtype == torch.bfloat16
    with torch.no_grad():
        assert onednn_linear(x.bfloat16(), weight.bfloat16()).dtype == torch.bfloat16
        assert onednn_linear(x[:0], weight).shape == (0, 3)
        subclass = type("Subclass", (torch.Tensor,), {})  # e.g. FSDP2's DTensor weights
        assert onednn_linear(x.detach(), weight.detach().as_subclass(subclass)).shape == (4, 3)
    assert calls == []
    with torch.no_grad():  # the engine's case: a Parameter weight, no grad, fp32
        onednn_linear(x.detach(), torch.nn.Parameter(weight.detach()))
    assert len(calls) == 1


@needs_onednn
def test_use_linear_kernel_routes_the_models_linears_and_restores_them(tiny, monkeypatch):
    model, _ = tiny
    calls = []
    real = linear_kernel.onednn_linear

    def record(x, weight, bias=None):
        calls.append(tuple(weight.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(linear_kernel, "onednn_linear", record)
    ids = torch.tensor([[3, 4, 5]])
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with use_linear_kernel(model, "onednn") as kernel:
            assert kernel == "onednn"
            got = model(input_ids=ids).logits
        assert len(calls) == len(linears)  # every linear layer, the output head included
        after = model(input_ids=ids).logits
    assert all("forward" not in m.__dict__ for m in linears)
    assert len(calls) == len(linears)  # outside the block: nothing routed
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(after, expected)


def test_use_linear_kernel_restores_on_error_and_leaves_hooked_modules_alone(tiny):
    model, _ = tiny
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    hooked = linears[0]
    hooked.forward = own = lambda x: x  # e.g. accelerate's hook
    try:
        with pytest.raises(RuntimeError, match="boom"), use_linear_kernel(model, "onednn"):
            assert hooked.forward is own
            raise RuntimeError("boom")
        assert hooked.forward is own
        assert all("forward" not in m.__dict__ for m in linears[1:])
    finally:
        del hooked.forward


def test_use_linear_kernel_torch_patches_nothing(tiny):
    model, _ = tiny
    with use_linear_kernel(model, "torch") as kernel:
        assert kernel == "torch"
        assert all("forward" not in m.__dict__ for m in model.modules())
