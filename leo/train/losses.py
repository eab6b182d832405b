"""Losses and metrics of stage-1 training.

- :class:`VGG19Features` / :class:`PerceptualLoss`: multi-scale VGG19 perceptual loss. The network
  is defined here; its weights come from a local file in torchvision's layout (``features.N.*``
  keys, e.g. the ``vgg19-dcbb9e9d.pth`` the user downloaded). Nothing is fetched at run time.
- non-saturating GAN losses and the R1 penalty;
- reconstruction metrics: L1, PSNR, SSIM (images in [-1, 1], evaluated on [0, 1]).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

# torchvision's vgg19 "features": conv channel plan ("M" = 2x2 max pool).
_VGG19_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# Indices in ``features`` of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
VGG19_LAYERS = (1, 6, 11, 20, 29)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """VGG19's convolutional part with torchvision's module indices (so its state_dict keys are
    ``features.<i>.weight``), returning the activations at ``layers`` for images in [-1, 1]."""

    def __init__(self, layers=VGG19_LAYERS):
        super().__init__()
        mods, cin = [], 3
        for v in _VGG19_PLAN:
            if v == "M":
                mods.append(nn.MaxPool2d(2, 2))
            else:
                mods += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
                cin = v
        self.layers = tuple(layers)
        self.features = nn.Sequential(*mods[: max(self.layers) + 1])
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path, layers=VGG19_LAYERS) -> "VGG19Features":
        """Load torchvision-format VGG19 weights (a ``.pth`` state_dict or ``.safetensors``)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"VGG19 weights not found: {path}")
        try:
            if path.endswith(".safetensors"):
                from safetensors.torch import load_file

                sd = load_file(path)
            else:
                sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"cannot read VGG19 weights {path}: {' '.join(str(exc).split())[:200]}") from None
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ValueError(f"{path} does not hold a state_dict")
        model = cls(layers)
        want = model.state_dict()
        got = {k: v for k, v in sd.items() if k in want}
        missing = [k for k in want if k not in got]
        if missing:
            raise ValueError(f"{path} is not a torchvision VGG19 state_dict: missing {missing[:3]}"
                             f"{' ...' if len(missing) > 3 else ''}")
        for k, v in got.items():
            if tuple(v.shape) != tuple(want[k].shape):
                raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, VGG19 needs {tuple(want[k].shape)}")
        model.load_state_dict({k: v.float() for k, v in got.items()})
        return model.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x + 1) * 0.5 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = []
        for i, m in enumerate(self.features):
            if isinstance(m, nn.MaxPool2d) and min(x.shape[-2:]) < 2:
                break  # small images (coarse scales): only the layers that still have pixels
            x = m(x)
            if i in self.layers:
                out.append(x)
        return out


class PerceptualLoss(nn.Module):
    """Sum over image scales (1, 1/2, 1/4, ...) and VGG layers of mean |phi(x) - phi(y)|."""

    def __init__(self, vgg: VGG19Features, scales=(1.0, 0.5, 0.25), layer_weights=(1.0, 1.0, 1.0, 1.0, 1.0)):
        super().__init__()
        self.vgg = vgg
        self.scales, self.layer_weights = tuple(scales), tuple(layer_weights)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros((), dtype=torch.float32)
        for s in self.scales:
            xs, ys = (x, y) if s == 1.0 else (F.interpolate(t, scale_factor=s, mode="bilinear", antialias=True,
                                                             align_corners=False) for t in (x, y))
            with torch.no_grad():
                fy = self.vgg(ys)
            for w, a, b in zip(self.layer_weights, self.vgg(xs), fy):
                total = total + w * (a.float() - b.float()).abs().mean()
        return total


def g_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss softplus(-D(G(z)))."""
    return F.softplus(-fake_logits.float()).mean()


def d_logistic(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss softplus(D(fake)) + softplus(-D(real))."""
    return F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||dD(x)/dx||^2 at real images (``real`` must require grad)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


# --------------------------------------------------------------------------- metrics


def _to01(x):
    return ((x.float() + 1) * 0.5).clamp(0, 1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (evaluated on [0, 1], clamped), shape (B,)."""
    mse = (_to01(x) - _to01(y)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _gauss_window(size: int, sigma: float, device) -> torch.Tensor:
    c = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(c**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004; Gaussian 11x11, sigma 1.5, 'valid' windows, channel mean)
    of images in [-1, 1] evaluated on [0, 1], shape (B,)."""
    x, y = _to01(x), _to01(y)
    c = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])
    g = _gauss_window(window, sigma, x.device)
    gh = g.view(1, 1, 1, -1).expand(c, 1, 1, window)
    gv = g.view(1, 1, -1, 1).expand(c, 1, window, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, gh, groups=c), gv, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return m.flatten(1).mean(1)


def reconstruction_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean L1 (on [-1, 1]), PSNR and SSIM over a batch."""
    return {
        "l1": (pred.float() - target.float()).abs().mean().item(),
        "psnr": psnr(pred, target).mean().item(),
        "ssim": ssim(pred, target).mean().item(),
    }
