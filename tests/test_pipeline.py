"""LEOPipeline (chaining, any length, streaming, editing) and the `leo generate/edit/init-lmdm` commands."""
import dataclasses

import pytest
import torch

from leo.lmdm import LMDM
from leo.pipeline import _SEED_STRIDE, LEOPipeline
from tests._util import assert_close
from tests.conftest import requires_cuda

D = 6


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclasses.dataclass
class Cache:
    wa: torch.Tensor
    feats: list
    alpha: torch.Tensor


class ToyAnimator(torch.nn.Module):
    """A tiny stand-in with the Animator interface: codes are linear in the image, frames are
    the source image shifted by a linear map of the latent code (absolute or relative)."""

    size = 8

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.enc = torch.nn.Parameter(torch.randn(3 * 8 * 8, D, generator=g) * 0.05)
        self.dec = torch.nn.Parameter(torch.randn(D, 3 * 8 * 8, generator=g) * 0.05)
        self.config = {"size": 8, "motion_dim": D}
        self.render_calls = []

    def encode_motion(self, frames):
        return frames.flatten(1) @ self.enc

    def encode(self, source):
        return Cache(wa=source, feats=[], alpha=self.encode_motion(source))

    def render(self, cache, alphas, start_alpha=None):
        self.render_calls.append(alphas.shape[0])
        lat = alphas if start_alpha is None else alphas - start_alpha + cache.alpha
        return torch.tanh(cache.wa + (lat @ self.dec).view(-1, 3, 8, 8))


def small_lmdm(window=8, seed=0, **kw):
    torch.manual_seed(seed)
    m = LMDM(motion_dim=D, width=16, channel_mult=(1, 2), head_dim=16, window=window, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
    m.set_code_stats(torch.randn(D) * 0.1, torch.rand(D) + 0.5, torch.zeros(D), torch.ones(D))
    return m.eval()


class ListWriter:
    def __init__(self):
        self.chunks = []

    def write(self, frames):
        self.chunks.append(frames.clone())


def test_chaining_continuity_and_any_length():
    lmdm = small_lmdm(window=8)
    pipe = LEOPipeline(ToyAnimator(), lmdm)
    a1 = torch.randn(D)
    kw = dict(seed=4, steps=3)
    codes = pipe.sample_codes(a1, 23, **kw)
    assert codes.shape == (23, D)
    assert torch.equal(codes[0], a1)
    # Window 8: chunk 0 gives codes 0..7; chunk k > 0 is sampled with alpha_1 := the last code of
    # chunk k-1 (its first code, equal to that one, is not repeated) and gives 7 new codes.
    chunks = list(pipe.iter_codes(a1[None], 23, **kw))
    assert [c.shape[1] for c in chunks] == [8, 7, 7, 1]
    start = codes[7]
    x = pipe.diffusion.sample(lmdm, (1, D, 8), cond=start[None], steps=3, seed=4 + _SEED_STRIDE)
    expect = lmdm.residuals_to_codes(x, start[None])[0]
    assert torch.equal(expect[0], codes[7])
    assert_close(codes[8:15], expect[1:], tol=1e-6, name="chunk 1 continues from the last code of chunk 0")
    # Any length, same seed: every length is a prefix of the longer sequence (streaming order).
    for n in (1, 7, 8, 9, 15, 16, 22):
        c = pipe.sample_codes(a1, n, **kw)
        assert c.shape == (n, D)
        assert_close(c, codes[:n], tol=1e-6)
    # Batched first codes.
    b = pipe.sample_codes(torch.stack((a1, a1 + 1)), 9, **kw)
    assert b.shape == (2, 9, D) and torch.equal(b[:, 0], torch.stack((a1, a1 + 1)))
    with pytest.raises(ValueError, match="num_frames"):
        pipe.sample_codes(a1, 0)


def test_generate_streams_in_bounded_chunks():
    anim = ToyAnimator()
    pipe = LEOPipeline(anim, small_lmdm(window=8), render_batch=4)
    img = torch.rand(3, 8, 8) * 2 - 1
    frames = pipe.generate(img, 19, seed=1, steps=2)
    assert frames.shape == (19, 3, 8, 8) and frames.dtype == torch.float32 and torch.isfinite(frames).all()
    anim.render_calls.clear()
    w = ListWriter()
    n = pipe.generate(img, 19, seed=1, steps=2, writer=w)
    assert n == 19 and max(anim.render_calls) <= 4 and max(c.shape[0] for c in w.chunks) <= 4
    assert torch.equal(torch.cat(w.chunks), frames)
    # Frame 1 is the animator's rendering of the first frame's own code.
    assert_close(frames[0], anim.render(anim.encode(img[None]), anim.encode(img[None]).alpha)[0], tol=1e-6)
    other = pipe.generate(img, 19, seed=2, steps=2)
    assert not torch.allclose(other, frames)
    with pytest.raises(ValueError, match="first_frame"):
        pipe.generate(torch.rand(3, 9, 9), 4)


def test_long_video_streams_1024_frames():
    """1024 frames from a window-16 model: 69 chained chunks, rendered and written as they come."""

    class CountingWriter:
        n, biggest = 0, 0

        def write(self, frames):
            assert torch.isfinite(frames).all()
            self.n += frames.shape[0]
            self.biggest = max(self.biggest, frames.shape[0])

    pipe = LEOPipeline(ToyAnimator(), small_lmdm(window=16), render_batch=8)
    w = CountingWriter()
    assert pipe.generate(torch.zeros(3, 8, 8), 1024, seed=0, steps=1, writer=w) == 1024
    assert w.n == 1024 and w.biggest == 8


def test_edit_and_motion_codes_toy():
    anim = ToyAnimator()
    pipe = LEOPipeline(anim, None, render_batch=3)
    video = torch.rand(7, 3, 8, 8) * 2 - 1
    codes = pipe.motion_codes(video)
    assert_close(codes, anim.encode_motion(video), tol=1e-6)
    same = pipe.edit(video, video[0])
    assert_close(same, anim.render(anim.encode(video[:1]), codes), tol=1e-5)
    edited = video[0].flip(-1)
    out = pipe.edit(video, edited)
    expect = anim.render(anim.encode(edited[None]), codes, start_alpha=codes[0])
    assert_close(out, expect, tol=1e-6)
    with pytest.raises(ValueError, match="no LMDM"):
        pipe.generate(video[0], 3)
    with pytest.raises(ValueError, match="video"):
        pipe.edit(torch.rand(7, 3, 4, 4), edited)


# ---------------------------------------------------------------------- with the real animator
@pytest.fixture(scope="module")
def animator():
    from leo.animator import Animator

    torch.manual_seed(0)
    return Animator(size=32, style_dim=64, motion_dim=D, width=0.25).eval()


def test_edit_with_unedited_first_frame_reproduces_reconstruction(animator):
    pipe = LEOPipeline(animator, None, render_batch=3)
    g = torch.Generator().manual_seed(0)
    video = (torch.rand(5, 3, 32, 32, generator=g) * 2 - 1).clamp(-1, 1)
    with torch.no_grad():
        recon = animator.render(animator.encode(video[:1]), animator.encode_motion(video))
    out = pipe.edit(video, video[0])
    assert out.shape == (5, 3, 32, 32)
    assert_close(out, recon, tol=1e-4, name="edit(video, its own first frame)")
    edited = pipe.edit(video, -video[0])
    assert not torch.allclose(edited, recon, atol=1e-3)


def test_generate_with_real_animator(animator):
    pipe = LEOPipeline(animator, small_lmdm(window=4), render_batch=4)
    img = torch.rand(3, 32, 32) * 2 - 1
    frames = pipe.generate(img, 6, seed=0, steps=2)
    assert frames.shape == (6, 3, 32, 32) and torch.isfinite(frames).all()
    for bad in (torch.full((3, 32, 32), float("nan")), torch.full((3, 32, 32), float("inf")),
                torch.zeros(3, 32, 32, dtype=torch.uint8)):
        with pytest.raises(ValueError, match="first_frame must be a floating-point image of finite values"):
            pipe.generate(bad, 6, seed=0, steps=2)  # never a video of NaN


# ---------------------------------------------------------------------- the commands
def test_cli_init_generate_edit(tmp_path, animator):
    from leo.cli import main
    from leo.media import VideoReader, VideoWriter, save_image

    anim_path, lmdm_path = tmp_path / "anim.safetensors", tmp_path / "m.safetensors"
    animator.save(anim_path)
    assert main(["init-lmdm", "--out", str(lmdm_path), "--motion-dim", str(D), "--width", "16",
                 "--window", "4", "--seed", "1"]) == 0
    img = tmp_path / "first.png"
    save_image(img, torch.rand(3, 40, 40) * 2 - 1)
    out = tmp_path / "gen.mp4"
    rc = main(["generate", "--animator", str(anim_path), "--lmdm", str(lmdm_path), "--image", str(img),
               "--frames", "7", "--out", str(out), "--steps", "2", "--seed", "3", "--no-progress"])
    assert rc == 0
    with VideoReader(out, 32) as r:
        frames = r.read_all()
    assert frames.shape == (7, 3, 32, 32)

    edited = tmp_path / "edited.png"
    save_image(edited, torch.rand(3, 32, 32) * 2 - 1)
    out2 = tmp_path / "edit.gif"
    rc = main(["edit", "--animator", str(anim_path), "--video", str(out), "--first-frame", str(edited),
               "--out", str(out2), "--no-progress"])
    assert rc == 0
    with VideoReader(out2, 32) as r:
        assert r.read_all().shape == (7, 3, 32, 32)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from leo.cli import main

    lmdm_path = tmp_path / "m.safetensors"
    small_lmdm().save(lmdm_path)
    img = tmp_path / "x.png"
    base = ["generate", "--animator", str(tmp_path / "nope.pt"), "--lmdm", str(lmdm_path), "--image", str(img),
            "--out", str(tmp_path / "o.mp4")]
    cases = [
        (base + ["--frames", "0"], "--frames"),
        (base + ["--frames", "3"], "--animator"),
        (base[:-1] + [str(tmp_path / "o.avi"), "--frames", "3"], "--out"),
        (["generate", "--animator", "a", "--lmdm", "m", "--unconditional", "--frames", "3", "--out", "o.mp4"],
         "--first-frame-model"),
        (["init-lmdm", "--out", str(tmp_path / "x.safetensors"), "--head-dim", "24"], "head_dim"),
        (["edit", "--animator", "a", "--video", str(tmp_path / "none.mp4"), "--first-frame", "f.png",
          "--out", str(tmp_path / "o.mp4")], "--video"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("leo: error:") and needle in err and "\n" not in err, err


def test_cli_unconditional_with_first_frame_model(tmp_path, animator):
    from leo import first_frame as ff
    from leo.cli import main
    from leo.media import VideoReader

    anim_path, lmdm_path, ff_path = (tmp_path / n for n in ("a.safetensors", "m.safetensors", "ff.safetensors"))
    animator.save(anim_path)
    small_lmdm(window=4).save(lmdm_path)
    torch.manual_seed(0)
    ff.FirstFrameModel(image_size=16, base_channels=8, channel_mults=(1, 2), attn_resolutions=()).save(ff_path)
    out = tmp_path / "u.mp4"
    rc = main(["generate", "--animator", str(anim_path), "--lmdm", str(lmdm_path), "--unconditional",
               "--first-frame-model", str(ff_path), "--frames", "5", "--out", str(out), "--steps", "2",
               "--seed", "0", "--no-progress"])
    assert rc == 0
    with VideoReader(out, 32) as r:
        assert r.read_all().shape == (5, 3, 32, 32)


def test_edit_real_clip_from_file(tmp_path, animator, lia_samples):
    """edit() from a video file (streamed through VideoReader) on a real clip: with the clip's own
    first frame it reproduces the reconstruction of the decoded frames."""
    from leo.media import VideoReader, VideoWriter

    with VideoReader(lia_samples / "taichi" / "driving1.mp4", 32) as r:
        clip = next(r.chunks(6))
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, 25) as w:
        w.write(clip)
    with VideoReader(path, 32) as r:
        frames = r.read_all()
    pipe = LEOPipeline(animator, None, render_batch=4)
    with torch.no_grad():
        recon = animator.render(animator.encode(frames[:1]), animator.encode_motion(frames))
    assert_close(pipe.motion_codes(path), animator.encode_motion(frames), tol=1e-5)
    w = ListWriter()
    assert pipe.edit(path, frames[0], writer=w) == frames.shape[0]
    assert_close(torch.cat(w.chunks), recon, tol=1e-4)


@requires_cuda
@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("ddpm", 50)])
def test_cuda_graph_codes_match_eager(sampler, steps):
    """Chained LMDM sampling (leo_kernels attention on CUDA) graphed vs eager, same seed; one
    graph serves every chunk (same shape), and outputs kept by the caller stay intact."""
    lmdm = small_lmdm(window=8).cuda()
    pipe = LEOPipeline(ToyAnimator().cuda(), lmdm)
    a1 = torch.randn(2, D, device="cuda")
    kw = dict(seed=5, steps=steps, sampler=sampler)
    eager = pipe.sample_codes(a1, 20, cuda_graph=False, **kw)
    graphed = pipe.sample_codes(a1, 20, cuda_graph=True, **kw)
    keep = graphed.clone()
    assert len(pipe.diffusion._graphs) == 1
    assert_close(graphed, eager, tol=1e-4, name="graphed codes")
    again = pipe.sample_codes(a1 + 1, 20, cuda_graph=True, **kw)
    assert torch.equal(graphed, keep) and not torch.allclose(again, graphed)
    frames = pipe.generate(torch.rand(3, 8, 8, device="cuda") * 2 - 1, 11, seed=1, steps=4, cuda_graph=True)
    assert frames.shape == (11, 3, 8, 8) and torch.isfinite(frames).all()
