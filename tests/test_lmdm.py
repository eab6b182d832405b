"""LMDM denoiser: shapes at any length, null condition, LMC residuals, statistics, checkpoints, training."""
import pytest
import torch

from leo.checkpoint_io import save_weights
from leo.lmdm import LMDM
from tests._util import assert_close


pytestmark = pytest.mark.usefixtures("one_thread")


def small(seed=0, randomize=True, **kw):
    torch.manual_seed(seed)
    cfg = dict(motion_dim=6, width=16, channel_mult=(1, 2), head_dim=16, window=8)
    cfg.update(kw)
    m = LMDM(**cfg)
    if randomize:  # zero-initialized output layers would hide most of the network
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.2)
    return m


@pytest.mark.parametrize("L", [1, 2, 3, 8, 13, 37])
@pytest.mark.parametrize("mult", [(1,), (1, 2), (1, 1, 2)])
def test_any_length(L, mult):
    m = small(channel_mult=mult)
    x = torch.randn(3, 6, L)
    t = torch.tensor([0, 500, 999])
    y = m(x, t, torch.randn(3, 6))
    assert y.shape == (3, 6, L) and torch.isfinite(y).all()
    # Samples of a batch are independent of each other.
    y1 = m(x[1:2], t[1:2], None)
    assert_close(y1, m(x, t, None)[1:2], tol=1e-5)


def test_condition_timestep_and_null_condition_matter():
    m = small()
    x, t, c = torch.randn(2, 6, 8), torch.tensor([10, 10]), torch.randn(2, 6)
    y = m(x, t, c)
    assert not torch.allclose(y, m(x, t, None), atol=1e-4)
    assert not torch.allclose(y, m(x, torch.tensor([900, 900]), c), atol=1e-4)
    # A mask mixes conditional and null rows; all False equals cond=None.
    mask = torch.tensor([True, False])
    mixed = m(x, t, c, cond_mask=mask)
    assert_close(mixed[0], y[0], tol=1e-6)
    assert_close(mixed[1], m(x, t, None)[1], tol=1e-6)
    assert_close(m(x, t, c, cond_mask=torch.tensor([False, False])), m(x, t, None), tol=1e-6)
    assert torch.equal(m(x, t, (c, mask)), mixed)  # the pair form, for loaders that drop themselves
    with pytest.raises(ValueError, match="cond"):
        m(x, t, torch.randn(2, 5))
    with pytest.raises(ValueError, match="x must be"):
        m(torch.randn(2, 5, 8), t, c)


def test_reference_kernels_switch_matches_auto():
    a = small(seed=1)
    b = small(seed=1, kernels="reference")
    x, t, c = torch.randn(2, 6, 11), torch.tensor([3, 700]), torch.randn(2, 6)
    assert_close(a(x, t, c), b(x, t, c), tol=1e-5)
    with pytest.raises(ValueError, match="kernels"):
        LMDM(kernels="fast")


def test_bad_config_names_the_argument():
    with pytest.raises(ValueError, match="head_dim"):
        LMDM(head_dim=24)
    with pytest.raises(ValueError, match="width"):
        LMDM(width=0)
    with pytest.raises(ValueError, match="channel_mult"):
        LMDM(channel_mult=())
    with pytest.raises(ValueError, match="window must be at least 2 frames"):
        LMDM(window=1)  # its only code would be the starting code: the pipeline would chain forever


def test_residual_round_trip_and_statistics():
    m = small()
    codes = torch.randn(4, 9, 6, dtype=torch.float64) * 3 + 1
    m.double().fit_code_stats(codes)
    res = codes - codes[:, :1]
    assert torch.allclose(m.res_mean, res.mean((0, 1))) and torch.allclose(m.res_std, res.std((0, 1)))
    assert torch.allclose(m.alpha_mean, codes[:, 0].mean(0))
    x, a1 = m.codes_to_residuals(codes)
    assert x.shape == (4, 6, 9) and torch.equal(a1, codes[:, 0])
    # Standardized over the training set: zero mean, unit std per dimension.
    assert torch.allclose(x.mean((0, 2)), torch.zeros(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(x.std((0, 2)), torch.ones(6, dtype=torch.float64))
    back = m.residuals_to_codes(x, a1)
    assert torch.allclose(back, codes, atol=1e-12)
    assert torch.equal(back[:, 0], codes[:, 0])  # the first code is exactly alpha_1
    with pytest.raises(ValueError, match="codes"):
        m.codes_to_residuals(torch.randn(4, 9, 5))
    with pytest.raises(ValueError, match="std"):
        m.set_code_stats(torch.zeros(6), torch.ones(5))


def test_checkpoint_round_trip(tmp_path):
    m = small(objective="eps", window=12)
    m.set_code_stats(torch.rand(6), torch.rand(6) + 0.5, torch.rand(6), torch.rand(6) + 0.5)
    p = tmp_path / "m.safetensors"
    m.save(p)
    r = LMDM.from_checkpoint(p)
    assert r.config == m.config and r.window == 12
    for k, v in m.state_dict().items():
        assert torch.equal(v, r.state_dict()[k]), k
    x, t, c = torch.randn(2, 6, 12), torch.tensor([1, 2]), torch.randn(2, 6)
    assert torch.equal(m(x, t, c), r(x, t, c))
    d = r.make_diffusion()
    assert d.objective == "eps" and d.num_steps == 1000 and d.schedule == "cosine"


def test_bad_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError):
        LMDM.from_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="readable"):
        LMDM.from_checkpoint(junk)
    other = tmp_path / "other.safetensors"
    save_weights(other, {"w": torch.zeros(2)}, "animator", {})
    with pytest.raises(ValueError, match="animator"):
        LMDM.from_checkpoint(other)
    m = small(randomize=False)
    sd = m.state_dict()
    sd.pop("null_cond")
    bad = tmp_path / "bad.safetensors"
    save_weights(bad, sd, "lmdm", m.config)
    with pytest.raises(ValueError, match="null_cond"):
        LMDM.from_checkpoint(bad)
    wrong = tmp_path / "wrong.safetensors"
    save_weights(wrong, small(width=32, randomize=False).state_dict(), "lmdm", m.config)
    with pytest.raises(ValueError, match="do not match"):
        LMDM.from_checkpoint(wrong)
    cfg = tmp_path / "cfg.safetensors"
    save_weights(cfg, sd, "lmdm", dict(m.config, colour="red"))
    with pytest.raises(ValueError, match="colour"):
        LMDM.from_checkpoint(cfg)


def toy_codes(n, L, D, g):
    """Smooth toy motion: alpha_1 random, then a sinusoid of random phase and amplitude."""
    a1 = torch.randn(n, 1, D, generator=g)
    phase = torch.rand(n, 1, 1, generator=g) * 6.28
    amp = 0.5 + torch.rand(n, 1, D, generator=g)
    tt = torch.arange(L, dtype=torch.float32).view(1, L, 1)
    return a1 + amp * (torch.sin(0.4 * tt + phase) - torch.sin(phase))


def test_lmdm_trains_on_codes():
    """Loss falls on a toy code distribution (LMC residuals, v objective, 10% null condition):
    the loss on a fixed held-out batch with fixed timesteps and noise, before vs after training."""
    g = torch.Generator().manual_seed(0)
    m = small(seed=0, randomize=False, motion_dim=4, width=16, window=16)
    diff = m.make_diffusion()
    data = toy_codes(320, 16, 4, g)
    train, held = data[:256], data[256:]
    m.fit_code_stats(train)
    x_ev, a_ev = m.codes_to_residuals(held)

    def eval_loss():
        with torch.no_grad():
            return diff.training_loss(m, x_ev, a_ev, generator=torch.Generator().manual_seed(123)).item()

    before = eval_loss()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(50):
        x, a1 = m.codes_to_residuals(train[torch.randint(0, 256, (16,), generator=g)])
        loss = diff.training_loss(m, x, a1, generator=g, p_uncond=0.1)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.8 * before, (before, after)
    # The attention blocks take part in training (their zero-initialized output moved).
    assert m.mid_attn.w_out.abs().max() > 0
