"""leo.metrics on known answers: stills, copies, exact reconstructions, known residuals."""
import pytest
import torch

from leo import metrics
from leo.animator import Animator
from leo.data.synthetic import render_video


@pytest.fixture(scope="module")
def clips():
    return [render_video(7, i, num_frames=9, size=32) for i in range(2)]


class _Oracle(torch.nn.Module):
    """Returns the target itself: the perfect reconstruction."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, source, target):
        return target.clone()


def test_still_video_has_no_motion_or_jitter():
    still = torch.rand(1, 3, 8, 8).expand(6, -1, -1, -1) * 2 - 1
    assert metrics.video_motion(still) == 0.0
    assert metrics.video_jitter(still) == 0.0


def test_motion_and_jitter_of_a_linear_ramp():
    t = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1) * 0.1
    video = t.expand(5, 3, 4, 4)
    assert metrics.video_jitter(video) == pytest.approx(0.1)
    assert metrics.video_motion(video) == pytest.approx((0.1 + 0.2 + 0.3 + 0.4) / 4)
    seam = metrics.seam_jitter(video, [2, 4])
    assert seam["ratio"] == pytest.approx(1.0)
    jump = video.clone()
    jump[3:] += 0.5  # a jump between frame 2 and 3
    assert metrics.seam_jitter(jump, [3])["ratio"] == pytest.approx(6.0)


def test_pair_frames_takes_frame_zero_as_source(clips):
    pairs = metrics.pair_frames(clips, pairs_per_clip=4)
    assert pairs["source"].shape == pairs["target"].shape == (8, 3, 32, 32)
    assert torch.equal(pairs["source"][0], clips[0][0]) and torch.equal(pairs["target"][3], clips[0][8])
    assert metrics.pair_frames(clips)["source"].shape[0] == 16  # every t >= 1


def test_one_pair_per_clip_targets_the_middle_frame(clips):
    # not frame 1: the trainer's eval of 8 pairs over 8 clips measured adjacent frames only
    n = clips[0].shape[0] - 1
    pairs = metrics.pair_frames(clips, pairs_per_clip=1)
    assert pairs["target"].shape[0] == len(clips)
    assert torch.equal(pairs["target"][0], clips[0][(n + 1) // 2])
    assert not torch.equal(pairs["target"][0], clips[0][1])


def test_copying_animator_has_gain_zero_and_no_motion(clips):
    torch.manual_seed(0)
    model = Animator(size=32, style_dim=32, width=1 / 16, align_corners=True).init_copy_source()
    report = metrics.animator_report(model, clips, pairs_per_clip=4)
    pairs = metrics.pair_frames(clips, 4)
    copy_l1 = (pairs["source"] - pairs["target"]).abs().mean().item()
    assert report["copy_l1"] == pytest.approx(copy_l1, rel=1e-6)
    assert report["l1"] == pytest.approx(copy_l1, rel=1e-4)
    assert abs(report["gain"]) < 1e-3
    assert report["psnr"] == pytest.approx(report["copy_psnr"], abs=1e-2)
    assert report["motion_ratio"] < 1e-3  # renders frame 0 every time: a still
    assert abs(report["moving_gain"]) < 1e-3 and report["still_l1"] < 1e-3  # sub-threshold differences only
    assert 0 < report["moving_fraction"] < 1


def test_moving_mask_marks_changed_pixels_dilated_by_two():
    a = torch.zeros(1, 3, 9, 9)
    b = a.clone()
    b[0, :, 4, 4] = 0.5  # one changed pixel; a change below the threshold elsewhere
    b[0, :, 0, 8] = metrics.MOVING_THRESHOLD / 2
    m = metrics.moving_mask(a, b)
    expected = torch.zeros(1, 1, 9, 9)
    expected[0, 0, 2:7, 2:7] = 1
    assert torch.equal(m, expected)


def test_moving_and_still_pixels_split_the_error(clips):
    pairs = metrics.pair_frames(clips, 4)

    class PasteTarget(_Oracle):  # exact on the moving pixels, a constant error on the still ones
        def forward(self, source, target):
            moving = metrics.moving_mask(source, target)
            off = torch.where(target < 0.8, target + 0.1, target - 0.1)  # stays inside [-1, 1]
            return torch.where(moving > 0, target, off)

    report = metrics.reconstruction_report(PasteTarget(), pairs)
    assert report["moving_gain"] == pytest.approx(1.0)
    assert report["still_l1"] == pytest.approx(0.1, rel=1e-4)
    # the two regions add up to the whole image's L1
    f = report["moving_fraction"]
    assert report["l1"] == pytest.approx(0.1 * (1 - f), rel=1e-4)


def test_perfect_reconstruction_has_gain_one(clips):
    report = metrics.reconstruction_report(_Oracle(), metrics.pair_frames(clips, 4))
    assert report["l1"] == 0.0 and report["gain"] == 1.0 and report["copy_l1"] > 0
    assert report["moving_gain"] == 1.0 and report["still_l1"] == 0.0


def test_generated_report_relative_to_real(clips):
    still = clips[0][:1].expand(9, -1, -1, -1)
    out = metrics.generated_report({"real_again": clips[0], "still": still}, [clips[0]])
    assert out["real_again"]["motion_vs_real"] == pytest.approx(1.0)
    assert out["real_again"]["jitter_vs_real"] == pytest.approx(1.0)
    assert out["still"]["motion_vs_real"] == 0.0


def test_residual_stats_known_answer():
    codes = torch.zeros(2, 3, 2)
    codes[0, 1:, 0] = torch.tensor([1.0, 3.0])
    codes[1, 1:, 0] = torch.tensor([1.0, 3.0])
    codes[:, :, 1] = 5.0  # constant: residual 0
    st = metrics.residual_stats(codes)
    assert st["mean"] == pytest.approx([2.0, 0.0])
    assert st["std"][1] == 0.0 and st["std"][0] == pytest.approx(torch.tensor([1.0, 3, 1, 3]).std().item())


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="frames"):
        metrics.video_motion(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="seams"):
        metrics.seam_jitter(torch.zeros(4, 3, 4, 4), [0])
    with pytest.raises(ValueError, match="codes"):
        metrics.residual_stats(torch.zeros(4))
