"""leo.layers building blocks shared by the animator and the discriminator."""
import warnings

import pytest
import torch

from leo import layers as L
from leo.discriminator import Discriminator


@pytest.mark.parametrize("conv_kernel", [1, 3])
def test_fir_wrappers_own_the_sizes(conv_kernel):
    x = torch.randn(2, 3, 16, 12)
    blur = L.Blur.before_downsample(conv_kernel)
    w = torch.randn(5, 3, conv_kernel, conv_kernel)
    y = torch.nn.functional.conv2d(blur(x), w, stride=2)
    assert y.shape[-2:] == (8, 6)  # blur + stride-2 conv: exactly half
    assert torch.equal(blur(x, down=2), blur(x)[:, :, ::2, ::2])
    up = torch.nn.functional.conv_transpose2d(x, torch.randn(3, 4, conv_kernel, conv_kernel), stride=2)
    assert L.Blur.after_upsample(conv_kernel)(up).shape[-2:] == (32, 24)  # transposed conv + blur: twice
    assert L.Upsample()(x).shape[-2:] == (32, 24)
    assert L.Downsample()(x).shape[-2:] == (8, 6)
    assert "kernel" not in L.Blur.before_downsample(conv_kernel, persistent=False).state_dict()


def test_channel_table_one_rule():
    assert L.channel_table(256) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}
    assert L.channel_table(64, channel_multiplier=2, width=0.5) == {4: 256, 8: 256, 16: 256, 32: 256, 64: 256}
    assert min(L.channel_table(1024, width=0.01, min_channels=8).values()) == 8


def test_flow_warp_level_keeps_lia_names():
    assert L.ToFlow is L.FlowWarpLevel
    keys = set(L.FlowWarpLevel(8, 16).state_dict())
    assert keys == {"upsample.kernel", "conv.weight", "conv.modulation.weight", "conv.modulation.bias", "bias"}


def test_discriminator_kernels_knob_and_deprecated_backend():
    d = Discriminator(size=16, width=0.03125, kernels="reference")
    assert d.kernels == "reference" and d.backend == "reference"
    assert all(m.backend == "reference" for m in d.modules() if isinstance(m, L.KernelUser))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = Discriminator(size=16, width=0.03125, backend=None)
    assert old.kernels == "auto" and any(issubclass(w.category, DeprecationWarning) for w in caught)
    with pytest.raises(ValueError, match="kernels"):
        Discriminator(size=16, kernels="fast")
    # the discriminator's own keys: weight/bias per layer, no blur kernels
    keys = list(d.state_dict())
    assert keys[:2] == ["from_rgb.weight", "from_rgb.bias"] and "blocks.0.skip.weight" in keys
    assert not any(k.endswith("kernel") for k in keys)
    x = torch.randn(2, 3, 16, 16)
    d.kernels = "auto"
    out = d(x)
    d.kernels = "reference"
    assert torch.allclose(d(x), out, rtol=1e-4, atol=1e-5)
