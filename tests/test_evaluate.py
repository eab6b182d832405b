"""leo.evaluate: the distances against closed forms and scipy/double-loop references, the I3D
definition against the published key layout, both weights-file kinds, and the metrics' ranking
on synthetic videos (real vs real scores better than stills, shuffled frames, jittered frames)."""
import pathlib

import numpy as np
import pytest
import torch

from leo.evaluate import (FeatureStats, InceptionI3d, frechet_distance, frechet_from_features, generation_metrics,
                          kernel_distance, load_i3d, random_i3d_state_dict)
from leo.evaluate.i3d import I3DDetector

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")

FIXTURE = pathlib.Path(__file__).parent / "data" / "i3d_state_dict_keys.tsv"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _scipy_frechet(mu1, s1, mu2, s2):
    linalg = pytest.importorskip("scipy.linalg", reason="scipy is the reference for the matrix square root")
    covmean = linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


# ------------------------------------------------------------------------------ Fréchet distance
def test_frechet_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(60, 12)) * 3 + 1
    assert abs(frechet_from_features(x, x)) < 1e-9
    assert frechet_from_features(x, x + 0.5) == pytest.approx(12 * 0.25, rel=1e-9)  # a pure mean shift


def test_frechet_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    v1, v2 = rng.uniform(0.1, 4, size=8), rng.uniform(0.1, 4, size=8)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("rank", [20, 5], ids=["full-rank", "rank-deficient"])
def test_frechet_matches_scipy_sqrtm(rank):
    rng = np.random.default_rng(rank)
    a, b = rng.normal(size=(20, rank)), rng.normal(size=(20, rank))
    s1, s2 = a @ a.T, b @ b.T + (np.eye(20) * 0.5 if rank == 20 else 0)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), _scipy_frechet(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-7, abs=1e-7)


def test_feature_stats_stream_equals_batch():
    x = np.random.default_rng(2).normal(size=(50, 6))
    st = FeatureStats()
    for chunk in np.array_split(x, 7):
        st.add(torch.from_numpy(chunk))  # tensors or arrays
    np.testing.assert_allclose(st.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.cov, np.cov(x, rowvar=False, bias=True), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(st.features, x)
    with pytest.raises(ValueError, match="dimensions"):
        st.add(np.zeros((2, 5)))


# ------------------------------------------------------------------------------ kernel distance
def _kvd_loops(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_kernel_distance_matches_double_loop():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(5, 4)) + 0.3
    assert kernel_distance(x, y) == pytest.approx(_kvd_loops(x, y), rel=1e-10)


def test_kernel_distance_is_unbiased_near_zero_for_one_distribution():
    rng = np.random.default_rng(4)
    same = [kernel_distance(rng.normal(size=(40, 8)), rng.normal(size=(40, 8))) for _ in range(30)]
    shifted = kernel_distance(rng.normal(size=(40, 8)), rng.normal(size=(40, 8)) + 1.0)
    assert abs(np.mean(same)) < 0.1 * np.std(same) * 30 ** 0.5 + 1e-3  # mean 0 within its standard error
    assert shifted > 10 * np.std(same)
    x = rng.normal(size=(40, 8))
    assert abs(kernel_distance(x, x)) < 0.05 * shifted  # identical sets: about 0
    with pytest.raises(ValueError, match="at least 2"):
        kernel_distance(x[:1], x)


# ------------------------------------------------------------------------------ I3D
def _published_layout():
    rows = [line.split("\t") for line in FIXTURE.read_text().splitlines() if line and not line.startswith("#")]
    return [(k, tuple(int(v) for v in s.split(",") if v)) for k, s in rows]


def test_i3d_state_dict_equals_published_layout():
    published = _published_layout()
    ours = [(k, tuple(v.shape)) for k, v in InceptionI3d().state_dict().items()]
    assert len(published) == 344
    assert ours == published


@pytest.fixture(scope="module")
def small_i3d():
    m = InceptionI3d(resize_to=32)
    m.load_state_dict(random_i3d_state_dict(0))
    return m.eval()


def test_i3d_shapes_and_batch_invariance(small_i3d):
    x = torch.randint(0, 256, (3, 3, 16, 32, 32), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    with torch.no_grad():
        feats = small_i3d(x, rescale=True, return_features=True)
        probs = small_i3d(x, rescale=True)
        one = small_i3d(x[1:2], rescale=True, return_features=True)
        resized = small_i3d(x[:, :, :, :24, :24], rescale=True, resize=True, return_features=True)
    assert feats.shape == (3, 400) and resized.shape == (3, 400) and torch.isfinite(feats).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    torch.testing.assert_close(one[0], feats[1], rtol=1e-4, atol=1e-5)
    assert (feats[0] - feats[1]).abs().max() > 1e-3  # different clips, different features
    with pytest.raises(ValueError):
        small_i3d(torch.zeros(1, 16, 3, 32, 32))


def test_state_dict_and_torchscript_files_give_the_same_features(tmp_path):
    sd = random_i3d_state_dict(1)
    torch.save(sd, tmp_path / "rgb_imagenet.pt")
    m = InceptionI3d()
    m.load_state_dict(sd)
    torch.jit.script(m.eval()).save(str(tmp_path / "i3d_torchscript.pt"))
    a, b = load_i3d(tmp_path / "rgb_imagenet.pt"), load_i3d(tmp_path / "i3d_torchscript.pt")
    assert "state dict" in a.kind and "TorchScript" in b.kind
    x = torch.randint(0, 256, (1, 3, 16, 16, 16), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    fa, fb = a.features(x), b.features(x)  # both resize to 224, the protocol's size
    assert fa.shape == (1, 400) and fa.dtype == torch.float64
    torch.testing.assert_close(fa, fb, rtol=1e-5, atol=1e-6)


def test_old_format_state_dicts_load(tmp_path):
    """DataParallel 'module.' prefixes and files from PyTorch < 0.4 (no num_batches_tracked)."""
    sd = {"module." + k: v for k, v in random_i3d_state_dict(2).items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "i3d_pretrained_400.pt")
    det = load_i3d(tmp_path / "i3d_pretrained_400.pt")
    torch.testing.assert_close(det.model.Mixed_5c.b0.conv3d.weight, sd["module.Mixed_5c.b0.conv3d.weight"])


class _NotATensor:
    pass


def test_bad_weights_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        load_i3d(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(ValueError, match="neither a TorchScript archive nor"):
        load_i3d(tmp_path / "corrupt.pt")
    torch.save({"evil": _NotATensor()}, tmp_path / "pickle.pt")  # needs unpickling arbitrary classes
    with pytest.raises(ValueError, match="weights-only"):
        load_i3d(tmp_path / "pickle.pt")
    sd = random_i3d_state_dict(0)
    sd["logits.conv3d.weight"] = torch.zeros(400, 512, 1, 1, 1)
    del sd["Mixed_4b.b0.conv3d.weight"]
    torch.save(sd, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="1 missing keys.*1 shape conflicts"):
        load_i3d(tmp_path / "wrong.pt")


# ------------------------------------------------------------------------------ ranking
def _sets(n, frames=16, size=32):
    from leo.data.synthetic import render_video

    real = [render_video(0, i, num_frames=frames, size=size) for i in range(n)]
    other = [render_video(1, i, num_frames=frames, size=size) for i in range(n)]
    g = torch.Generator().manual_seed(0)
    still = [v[:1].expand(frames, -1, -1, -1).clone() for v in other]
    shuffled = [v[torch.randperm(frames, generator=g)] for v in other]

    def shake(v):  # camera jitter: every frame shifted by up to 2 pixels
        return torch.stack([torch.roll(f, tuple(torch.randint(-2, 3, (2,), generator=g).tolist()), (1, 2)) for f in v])

    return real, {"real (another seed)": other, "stills": still, "shuffled frames": shuffled,
                  "jittered frames": [shake(v) for v in other]}


def _assert_ranks(scores, key):
    best = scores["real (another seed)"][key]
    for name, s in scores.items():
        if name != "real (another seed)":
            assert s[key] > best, f"{key}: real vs {name} ({s[key]:.4g}) should score worse than real vs real ({best:.4g})"


def test_fmd_ranks_synthetic_defects():
    from leo.animator import Animator

    torch.manual_seed(0)
    animator = Animator(size=32, style_dim=64, width=1 / 8).eval()
    real, fakes = _sets(16)
    scores = {name: generation_metrics(real, fake, animator, frames=16) for name, fake in fakes.items()}
    _assert_ranks(scores, "fmd")
    assert scores["stills"]["motion_vs_real"] == 0 and scores["jittered frames"]["jitter_vs_real"] > 2


def test_fvd_and_kvd_with_random_i3d_rank_synthetic_defects():
    m = InceptionI3d(resize_to=32)
    m.load_state_dict(random_i3d_state_dict(0, motion_stem=True))
    det = I3DDetector(m.eval(), "random weights (test)")
    real, fakes = _sets(24)
    scores = {name: generation_metrics(real, fake, detector=det, frames=16, batch=12) for name, fake in fakes.items()}
    _assert_ranks(scores, "fvd")
    _assert_ranks(scores, "kvd")
    assert all("fmd" not in s for s in scores.values())  # no animator: no FMD
    assert "400 logits" in scores["stills"]["fvd_protocol"]


def test_generation_metrics_do_not_depend_on_batching(small_i3d):
    from leo.data.synthetic import render_video
    from leo.evaluate.generation import _to_u8

    det = I3DDetector(small_i3d, "random weights (test)")
    real = [render_video(0, i, num_frames=18, size=32) for i in range(5)]
    fake = [render_video(3, i, num_frames=16, size=32) for i in range(4)]
    a = generation_metrics(iter(real), iter(fake), detector=det, frames=16, batch=2)
    b = generation_metrics(real, fake, detector=det, frames=16, batch=8)
    direct = frechet_from_features(det.features(_to_u8(torch.stack([v[:16] for v in real]))),
                                   det.features(_to_u8(torch.stack(fake))))
    assert a["fvd"] == pytest.approx(b["fvd"], rel=1e-5) == pytest.approx(direct, rel=1e-5)
    assert a["clips_real"] == 5 and a["kvd_real_halves"] is not None  # halves of 3 and 2 clips
    capped = generation_metrics(real, fake, detector=det, frames=16, max_clips=3)
    assert capped["clips_real"] == capped["clips_fake"] == 3 and capped["fvd_real_halves"] is None
    with pytest.raises(ValueError, match="real clip 0 has 18 frames, fewer than frames=32"):
        generation_metrics(real, fake, detector=det, frames=32)
