"""LEOPipeline: image-to-video generation, long videos by chaining, and first-frame editing.

Stage 1 (the Animator) turns a first frame into a source cache and renders motion codes;
stage 2 (LMDM + GaussianDiffusion) samples motion-code sequences given the first frame's code
alpha_1 (Linear Motion Condition). Videos longer than the model's window are chained: chunk
k+1 is sampled with alpha_1 := the last code of chunk k and its residuals are added to that
code, so chunk k+1 starts exactly where chunk k ended (that shared code is emitted once).
Frames are rendered and handed to the writer chunk by chunk: memory does not grow with length.
"""
from __future__ import annotations

import os
from typing import Iterator

import torch

_SEED_STRIDE = 0x9E3779B97F4A7C15  # odd constant: distinct, well-spread per-chunk seeds


class LEOPipeline:
    """``LEOPipeline(animator, lmdm, diffusion=None)``; ``diffusion`` defaults to the one
    described by the LMDM's config. ``render_batch`` frames are rendered per animator call.
    ``lmdm`` may be None for a pipeline that only edits / extracts codes."""

    def __init__(self, animator, lmdm, diffusion=None, render_batch: int = 16):
        if render_batch < 1:
            raise ValueError(f"render_batch must be >= 1, got {render_batch}")
        self.animator = animator
        self.lmdm = lmdm
        if diffusion is None and lmdm is not None:
            diffusion = lmdm.make_diffusion()
        self.diffusion = diffusion
        self.render_batch = int(render_batch)

    @classmethod
    def from_checkpoints(cls, animator_path, lmdm_path, device="cpu", dtype=torch.float32, kernels="auto", **kw):
        from leo.animator import Animator
        from leo.lmdm import LMDM

        animator = Animator.from_checkpoint(animator_path, map_location="cpu").to(device=device, dtype=dtype).eval()
        lmdm = LMDM.from_checkpoint(lmdm_path, map_location="cpu", kernels=kernels).to(device=device, dtype=dtype).eval()
        return cls(animator, lmdm, **kw)

    # ------------------------------------------------------------------ helpers
    @property
    def size(self) -> int:
        cfg = getattr(self.animator, "config", None)
        if isinstance(cfg, dict) and "size" in cfg:
            return int(cfg["size"])
        return int(self.animator.size)

    def _anim_param(self):
        return next(iter(self.animator.parameters()), None) if isinstance(self.animator, torch.nn.Module) else None

    def _anim_device_dtype(self):
        p = self._anim_param()
        return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)

    def _lmdm_device_dtype(self):
        p = next(iter(self.lmdm.parameters()))
        return p.device, p.dtype

    def _image(self, img, name) -> torch.Tensor:
        """An image path or a (3,S,S) / (1,3,S,S) tensor in [-1, 1] -> (1,3,S,S) on the animator."""
        if isinstance(img, (str, os.PathLike)):
            from leo.media import read_image

            img = read_image(img, self.size)
        if not torch.is_tensor(img):
            raise TypeError(f"{name} must be an image path or a tensor, got {type(img).__name__}")
        if img.dim() == 3:
            img = img[None]
        S = self.size
        if img.shape != (1, 3, S, S):
            raise ValueError(f"{name} must be (3, {S}, {S}) or (1, 3, {S}, {S}), got {tuple(img.shape)}")
        if not img.is_floating_point() or not torch.isfinite(img).all():  # else a whole video of NaN
            raise ValueError(f"{name} must be a floating-point image of finite values in [-1, 1]")
        dev, dt = self._anim_device_dtype()
        return img.to(dev, dt)

    def _frames(self, video) -> Iterator[torch.Tensor]:
        """A video path or a (T,3,S,S) tensor -> chunks of at most render_batch frames on the animator."""
        dev, dt = self._anim_device_dtype()
        S = self.size
        if isinstance(video, (str, os.PathLike)):
            from leo.media import VideoReader

            with VideoReader(video, S) as reader:
                for chunk in reader.chunks(self.render_batch):
                    yield chunk.to(dev, dt)
            return
        if not torch.is_tensor(video):
            raise TypeError(f"video must be a path or a tensor, got {type(video).__name__}")
        if video.dim() != 4 or video.shape[1:] != (3, S, S) or video.shape[0] < 1:
            raise ValueError(f"video must be (T, 3, {S}, {S}) with T >= 1, got {tuple(video.shape)}")
        for chunk in video.split(self.render_batch):
            yield chunk.to(dev, dt)

    @staticmethod
    def _emit(frames, writer, out):
        frames = frames.float().cpu()
        if writer is not None:
            writer.write(frames)
        else:
            out.append(frames)

    @staticmethod
    def _progress(total, desc, enabled):
        if not enabled:
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="frame")

    # ------------------------------------------------------------------ motion codes
    @torch.no_grad()
    def iter_codes(
        self, alpha_1, num_frames: int, seed: int | None = None, steps: int = 50, sampler: str = "ddim",
        eta: float = 0.0, cuda_graph: bool | None = None, guidance_scale: float = 1.0,
    ) -> Iterator[torch.Tensor]:
        """Yield the codes of a ``num_frames`` sequence chunk by chunk, (B, n_k, motion_dim) each
        (alpha_1 (B, motion_dim)); the first code is alpha_1 itself."""
        if self.lmdm is None:
            raise ValueError("this pipeline has no LMDM: it can edit videos but not generate codes")
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        D, W = self.lmdm.motion_dim, self.lmdm.window
        if alpha_1.dim() != 2 or alpha_1.shape[1] != D:
            raise ValueError(f"alpha_1 must be (B, {D}), got {tuple(alpha_1.shape)}")
        dev, _ = self._lmdm_device_dtype()
        current = alpha_1.to(dev, torch.float32)  # the sampler state stays float32 (LMDM casts inside)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        produced, k = 0, 0
        while produced < num_frames:
            # Every chunk is sampled at the full window (one shape: one CUDA graph), then cropped.
            x = self.diffusion.sample(
                self.lmdm, (current.shape[0], D, W), cond=current, sampler=sampler, steps=steps, eta=eta,
                seed=(seed + k * _SEED_STRIDE) % 2**63, cuda_graph=cuda_graph, device=dev, dtype=torch.float32,
                guidance_scale=guidance_scale,
            )
            codes = self.lmdm.residuals_to_codes(x, current)  # codes[:, 0] == current exactly
            new = codes if k == 0 else codes[:, 1:]  # a later chunk's first code is the previous last
            take = min(num_frames - produced, new.shape[1])
            yield new[:, :take]
            produced += take
            current = codes[:, -1]
            k += 1

    def sample_codes(self, alpha_1, num_frames: int, **kw) -> torch.Tensor:
        """Codes of a sequence starting at alpha_1: (motion_dim,) -> (num_frames, motion_dim), or
        (B, motion_dim) -> (B, num_frames, motion_dim). Keyword arguments as :meth:`iter_codes`."""
        single = alpha_1.dim() == 1
        a = alpha_1[None] if single else alpha_1
        codes = torch.cat(list(self.iter_codes(a, num_frames, **kw)), dim=1)
        return codes[0] if single else codes

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self, first_frame, num_frames: int, seed: int | None = None, steps: int = 50, sampler: str = "ddim",
        cuda_graph: bool | None = None, writer=None, *, eta: float = 0.0, guidance_scale: float = 1.0,
        progress: bool = False,
    ):
        """Animate ``first_frame`` (path or (3,S,S) tensor in [-1, 1]) into ``num_frames`` frames.

        Returns the frames (num_frames, 3, S, S) float32 CPU, or, with ``writer`` (anything with
        ``.write(frames)``, e.g. leo.media.VideoWriter), streams them and returns the frame count.
        The first frame is the animator's reconstruction of ``first_frame``.
        """
        x1 = self._image(first_frame, "first_frame")
        cache = self.animator.encode(x1)
        out: list[torch.Tensor] = []
        bar = self._progress(num_frames, "generating", progress)
        adev, adt = self._anim_device_dtype()
        for codes in self.iter_codes(
            cache.alpha, num_frames, seed=seed, steps=steps, sampler=sampler, eta=eta,
            cuda_graph=cuda_graph, guidance_scale=guidance_scale,
        ):
            for sub in codes[0].split(self.render_batch):
                self._emit(self.animator.render(cache, sub.to(adev, adt)), writer, out)
                if bar is not None:
                    bar.update(sub.shape[0])
        if bar is not None:
            bar.close()
        return num_frames if writer is not None else torch.cat(out)

    @torch.no_grad()
    def motion_codes(self, video) -> torch.Tensor:
        """The animator's motion codes of a video (path or (T,3,S,S) tensor): (T, motion_dim)."""
        return torch.cat([self.animator.encode_motion(chunk) for chunk in self._frames(video)])

    @torch.no_grad()
    def edit(self, video, edited_first_frame, writer=None, *, progress: bool = False):
        """Re-render a video's motion on an edited first frame.

        The video's codes are taken relative to its own first frame and applied to the edited
        frame (the animator's relative mode), so an unedited first frame gives back the video's
        reconstruction. Returns frames (T,3,S,S) or, with ``writer``, the frame count.
        """
        cache = self.animator.encode(self._image(edited_first_frame, "edited_first_frame"))
        start = None
        out: list[torch.Tensor] = []
        total = 0
        bar = self._progress(video.shape[0] if torch.is_tensor(video) else None, "editing", progress)
        for chunk in self._frames(video):
            alphas = self.animator.encode_motion(chunk)
            if start is None:
                start = alphas[0]
            self._emit(self.animator.render(cache, alphas, start_alpha=start), writer, out)
            total += chunk.shape[0]
            if bar is not None:
                bar.update(chunk.shape[0])
        if bar is not None:
            bar.close()
        if total == 0:
            raise ValueError("video has no frames")
        return total if writer is not None else torch.cat(out)
