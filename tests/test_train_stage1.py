"""Training infrastructure (leo.train.common) and the stage-1 trainer."""
from __future__ import annotations

import math
import os
import pathlib
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from leo.train import common
from leo.train.common import (
    CheckpointError,
    DistributedContext,
    StreamSampler,
    TrainLogger,
    load_training_checkpoint,
    plot_losses,
    rng_state,
    save_training_checkpoint,
    seed_everything,
    set_rng_state,
)
from tests._util import assert_states_equal

REPO = pathlib.Path(__file__).resolve().parents[1]


def _draw():
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_rng_state_roundtrip_through_checkpoint(tmp_path):
    seed_everything(123)
    _draw()
    save_training_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = _draw()
    seed_everything(999)  # scramble
    set_rng_state(load_training_checkpoint(tmp_path / "c.pt")["rng"])
    got = _draw()
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2])


def test_seed_everything_rejects_bad_seed():
    with pytest.raises(TypeError, match="seed"):
        seed_everything("1")


def test_checkpoint_roundtrip_and_plain_types(tmp_path):
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    payload = {"model": m.state_dict(), "opt": opt.state_dict(), "step": 7,
               "config": {"lr": np.float32(0.5), "path": pathlib.Path("/x"), "arr": np.arange(3)}}
    save_training_checkpoint(tmp_path / "c.pt", payload)
    out = load_training_checkpoint(tmp_path / "c.pt")
    assert out["step"] == 7 and out["config"]["lr"] == 0.5 and out["config"]["path"] == "/x"
    assert torch.equal(out["config"]["arr"], torch.arange(3))
    for k, v in m.state_dict().items():
        assert torch.equal(out["model"][k], v)
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(out["opt"])  # loads into a fresh optimizer
    with pytest.raises(TypeError, match=r"payload\['bad'\]"):
        save_training_checkpoint(tmp_path / "d.pt", {"bad": object()})


def test_corrupt_and_missing_checkpoints_give_clear_errors(tmp_path):
    save_training_checkpoint(tmp_path / "c.pt", {"x": torch.randn(1000)})
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_training_checkpoint(tmp_path / "trunc.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_training_checkpoint(tmp_path / "junk.pt")
    torch.save({"x": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a leo training checkpoint"):
        load_training_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(FileNotFoundError):
        load_training_checkpoint(tmp_path / "nope.pt")


def test_checkpoint_write_interrupted_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_training_checkpoint(path, {"step": 1, "w": torch.ones(100)})
    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # writes half a file, then "the process dies"
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_training_checkpoint(path, {"step": 2, "w": torch.zeros(100)})
    monkeypatch.setattr(torch, "save", real_save)
    out = load_training_checkpoint(path)
    assert out["step"] == 1 and torch.equal(out["w"], torch.ones(100))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_stream_sampler_resume_and_ranks():
    it = iter(StreamSampler(start=5))
    assert [next(it) for _ in range(3)] == [5, 6, 7]
    r0, r1 = iter(StreamSampler(2, rank=0, world_size=2)), iter(StreamSampler(2, rank=1, world_size=2))
    assert [next(r0) for _ in range(2)] + [next(r1) for _ in range(2)] == [4, 6, 5, 7]
    with pytest.raises(ValueError):
        StreamSampler(-1)


def test_logger_csv_resume_and_plot(tmp_path):
    with TrainLogger(tmp_path, total_steps=10, samples_per_step=4, file=open(os.devnull, "w")) as lg:
        for i in range(1, 9):
            lg.log(i, {"loss": torch.tensor(1.0 / i), "l1": 0.5})
        lg.log(9, {"loss": 0.1, "psnr": 20.0})  # a new column widens the header
    rows = common.read_metrics(tmp_path / "metrics.csv")
    assert [s for s, _ in rows["loss"]] == list(range(1, 10))
    assert rows["psnr"] == [(9, 20.0)] and rows["samples_per_s"]
    # resuming at step 5 forgets the killed run's steps 6..9
    with TrainLogger(tmp_path, total_steps=10, start_step=5, file=open(os.devnull, "w")) as lg:
        lg.log(6, {"loss": 0.3})
    rows = common.read_metrics(tmp_path / "metrics.csv")
    assert [s for s, _ in rows["loss"]] == [1, 2, 3, 4, 5, 6] and rows["loss"][-1][1] == 0.3
    plot_losses(tmp_path / "metrics.csv", tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # a disabled logger (non-main rank) writes nothing
    TrainLogger(tmp_path / "other", enabled=False).log(1, {"loss": 1.0})
    assert not (tmp_path / "other").exists()


def test_distributed_context_single_process():
    with DistributedContext("cpu") as ctx:
        assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
        m = torch.nn.Linear(2, 2)
        assert ctx.wrap(m) is m and ctx.unwrap(m) is m
        t = torch.tensor([3.0])
        assert ctx.all_reduce_mean(t) is t
        ctx.barrier()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            DistributedContext("cuda")


def _torchrun(script: str, tmp_path, nproc=2, timeout=120, args=()):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    # --standalone picks a free port, so parallel test runs do not clash
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(path), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- losses and metrics

from leo.discriminator import Discriminator  # noqa: E402
from leo.train import losses  # noqa: E402


def _ssim_naive(x, y, win=5, sigma=1.5):
    """Direct per-window SSIM in float64 (independent of the conv implementation)."""
    x, y = ((x.double() + 1) / 2).clamp(0, 1), ((y.double() + 1) / 2).clamp(0, 1)
    c = torch.arange(win, dtype=torch.float64) - (win - 1) / 2
    g = torch.exp(-c**2 / (2 * sigma**2))
    w = (g[:, None] * g[None, :]) / (g.sum() ** 2)
    vals = []
    for b in range(x.shape[0]):
        per_c = []
        for ch in range(x.shape[1]):
            s = []
            for i in range(x.shape[2] - win + 1):
                for j in range(x.shape[3] - win + 1):
                    a, bb = x[b, ch, i:i + win, j:j + win], y[b, ch, i:i + win, j:j + win]
                    ma, mb = (w * a).sum(), (w * bb).sum()
                    va, vb = (w * a * a).sum() - ma**2, (w * bb * bb).sum() - mb**2
                    cov = (w * a * bb).sum() - ma * mb
                    s.append(((2 * ma * mb + 1e-4) * (2 * cov + 9e-4)) / ((ma**2 + mb**2 + 1e-4) * (va + vb + 9e-4)))
            per_c.append(torch.stack(s).mean())
        vals.append(torch.stack(per_c).mean())
    return torch.stack(vals)


def test_metrics_against_direct_formulas():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 9, 11, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 9, 11, generator=g)).clamp(-1, 1)
    assert torch.allclose(losses.ssim(x, y, window=5).double(), _ssim_naive(x, y), atol=1e-5)
    assert torch.allclose(losses.ssim(x, x), torch.ones(2), atol=1e-5)
    # PSNR of a constant offset d (on the [0, 1] scale) is -20 log10(d)
    z = torch.full((1, 3, 8, 8), -0.5)
    assert abs(losses.psnr(z + 0.2, z).item() - (-20 * np.log10(0.1))) < 1e-3
    m = losses.reconstruction_metrics(y, x)
    assert abs(m["l1"] - (y - x).abs().mean().item()) < 1e-6 and m["psnr"] > 0 and m["ssim"] < 1


def test_vgg19_loads_torchvision_layout(tmp_path):
    ref = losses.VGG19Features()
    # torchvision's file also holds the classifier, which we ignore
    sd = {k: torch.randn_like(v) * 0.05 for k, v in ref.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(sd, tmp_path / "vgg19.pth")
    vgg = losses.VGG19Features.from_file(tmp_path / "vgg19.pth")
    assert torch.equal(vgg.features[0].weight, sd["features.0.weight"])
    assert torch.equal(vgg.features[28].weight, sd["features.28.weight"])  # conv5_1, the deepest used
    assert not any(p.requires_grad for p in vgg.parameters())
    feats = vgg(torch.zeros(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512, 512]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    perc = losses.PerceptualLoss(vgg)
    assert perc(x, x).item() == 0.0
    y = x.clone().requires_grad_(True)
    loss = perc(y, x.flip(-1))
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    bad = dict(sd)
    bad["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="features.0.weight"):
        losses.VGG19Features.from_file(tmp_path / "bad.pth")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a torchvision VGG19"):
        losses.VGG19Features.from_file(tmp_path / "other.pth")


def test_discriminator_shapes_backends_and_r1():
    torch.manual_seed(0)
    D = Discriminator(size=32, width=0.0625)
    x = torch.randn(5, 3, 32, 32)  # batch 5: minibatch-stddev groups must divide it
    out = D(x)
    assert out.shape == (5,) and torch.isfinite(out).all()
    Dref = Discriminator(size=32, width=0.0625, backend="reference")
    Dref.load_state_dict(D.state_dict())
    assert torch.allclose(Dref(x), out, rtol=1e-4, atol=1e-5)
    real = x.clone().requires_grad_(True)
    r1 = losses.r1_penalty(D(real), real)
    r1.backward()  # second order through upfirdn2d/bias_act
    assert r1.item() > 0
    # every weight shapes dD/dx (the output bias does not, so it gets no gradient)
    weights = [p for n, p in D.named_parameters() if n.endswith("weight")]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in weights)
    sp = torch.nn.functional.softplus
    assert losses.d_logistic(out, out.flip(0)).item() == pytest.approx((sp(out.flip(0)).mean() + sp(-out).mean()).item())
    assert losses.g_nonsaturating(out).item() == pytest.approx(sp(-out).mean().item())
    with pytest.raises(ValueError, match="img"):
        D(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="size"):
        Discriminator(size=48)


# --------------------------------------------------------------------------- the stage-1 trainer

import signal  # noqa: E402

from leo.train.stage1 import Stage1Config, train_stage1  # noqa: E402


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    from leo.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, num_videos=4, num_frames=10, size=32, seed=0, fmt="frames")
    return root


def test_sample_grid_pairs_fill_four_columns():
    from leo.train.stage1 import _sample_pairs

    def clip(first, n):  # frame t of a fake clip is the constant first + t
        return (first + torch.arange(n, dtype=torch.float32)).view(n, 1, 1, 1).expand(n, 3, 2, 2)

    def picked(clips):
        p = _sample_pairs(clips)
        return p["source"][:, 0, 0, 0].tolist(), p["target"][:, 0, 0, 0].tolist()

    # one or two clips: frame 0 against frames spread up to the last; four or more: each clip's middle
    assert picked([clip(0, 46)]) == ([0, 0, 0, 0], [11, 22, 34, 45])
    assert picked([clip(0, 46), clip(100, 9)]) == ([0, 0, 100, 100], [22, 45, 104, 108])
    assert picked([clip(100 * i, 10 + i) for i in range(6)]) == ([0, 100, 200, 300], [5, 105, 206, 306])


def test_held_out_clips_of_an_empty_split_is_a_clear_error():
    from leo.data.videos import DataError
    from leo.train.stage1 import held_out_clips

    class NoUsableClips:  # a folder whose every clip of the split failed to decode
        root = "/data/videos"

        def iter_clips(self, split):
            return iter(())

    with pytest.raises(DataError, match="no usable clip in the 'test' split of /data/videos"):
        held_out_clips(NoUsableClips(), 8, "test")


def _cfg(out, data, **kw):
    base = dict(out=str(out), data=str(data), size=32, width=0.0625, style_dim=32, motion_dim=8, steps=4,
                batch=2, workers=0, eval_pairs=4, eval_every=100, sample_every=100, save_every=100,
                log_every=1, test_fraction=0.25, progress=False, seed=3, threads=1)
    base.update(kw)
    return Stage1Config(**base)


def test_trainer_reduces_loss_and_writes_outputs(tmp_path, synth_data):
    from leo.animator import Animator
    from leo.train.common import read_metrics

    # LIA's recipe (random init): the loss must fall from a random network's
    cfg = _cfg(tmp_path / "run", synth_data, steps=12, batch=4, eval_every=6, sample_every=6, save_every=6,
               r1=1.0, r1_every=4, workers=1, init="random", align_corners=False, relative_latent=False, relative_flow=False, pyramid=0,
               lr=2e-3)
    s = train_stage1(cfg)
    assert s["finished"] and s["step"] == 12
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    l1 = [v for _, v in rows["l1"]]
    assert np.mean(l1[-3:]) < 0.8 * np.mean(l1[:3]), l1
    assert s["final_eval"]["l1"] < s["initial_eval"]["l1"], (s["initial_eval"], s["final_eval"])
    assert {"d", "g_adv", "r1", "samples_per_s", "eval_psnr", "eval_ssim"} <= set(rows)
    run = tmp_path / "run"
    for name in ("checkpoint.pt", "loss.png", "summary.json", "samples/step_0000006.png", "samples/step_0000012.png"):
        assert (run / name).is_file(), name
    # the exported animator is the trained generator's EMA, in leo's format
    ck = load_training_checkpoint(run / "checkpoint.pt")
    anim = Animator.from_checkpoint(run / "animator.safetensors")
    assert anim.config == {**ck["animator_config"]} and anim.size == 32
    for k, v in anim.state_dict().items():
        assert torch.equal(v, ck["G_ema"][k]), k
    # an average, not a copy: it lies between the initial and the trained weights
    assert any(not torch.equal(v, ck["G"][k]) for k, v in ck["G_ema"].items())


def test_ema_off_exports_the_generator_and_old_configs_have_no_ema(tmp_path, synth_data):
    from leo.animator import Animator

    s = train_stage1(_cfg(tmp_path / "run", synth_data, steps=2, ema=0.0, adv_weight=0.0))
    ck = load_training_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert s["finished"] and "G_ema" not in ck
    anim = Animator.from_checkpoint(tmp_path / "run" / "animator.safetensors")
    for k, v in anim.state_dict().items():
        assert torch.equal(v, ck["G"][k]), k
    old = {k: v for k, v in Stage1Config(out="x", synthetic=2).to_dict().items() if k != "ema"}
    assert Stage1Config.from_dict(old).ema == 0.0
    with pytest.raises(ValueError, match="ema"):
        train_stage1(_cfg(tmp_path / "bad", synth_data, ema=1.0))


def test_cpu_amp_trains_the_steps_under_bf16_autocast(tmp_path, synth_data, monkeypatch):
    """cpu_amp (`--cpu-bf16`): generator and discriminator steps under CPU bf16 autocast, evaluations in
    float32; off by default."""
    from leo import layers

    seen = []
    real = layers.cpu_autocast
    monkeypatch.setattr(layers, "cpu_autocast", lambda x: seen.append(real(x)) or seen[-1])
    s = train_stage1(_cfg(tmp_path / "fp32", synth_data, steps=2))
    assert s["finished"] and seen and not any(seen)
    seen.clear()
    s = train_stage1(_cfg(tmp_path / "bf16", synth_data, steps=3, cpu_amp=True))
    assert s["finished"] and any(seen) and not all(seen)  # the steps under autocast, the evaluations not
    assert all(math.isfinite(v) for v in s["last_losses"].values()) and math.isfinite(s["final_eval"]["gain"])
    assert load_training_checkpoint(tmp_path / "bf16" / "checkpoint.pt")["config"]["cpu_amp"] is True


def test_resume_after_kill_mid_checkpoint_write_is_exact(tmp_path, synth_data, monkeypatch):
    """Uninterrupted 4 steps == (run killed while writing its step-2 checkpoint) + --resume."""
    ref = train_stage1(_cfg(tmp_path / "ref", synth_data, save_every=1))
    ref_ck = load_training_checkpoint(tmp_path / "ref" / "checkpoint.pt")

    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, f, *a, **k):  # the 2nd checkpoint write dies half-way through
        calls["n"] += 1
        real_save(obj, f, *a, **k)
        if calls["n"] == 2:
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 2)
            raise SystemExit("killed while writing")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(SystemExit):
        train_stage1(_cfg(tmp_path / "run", synth_data, save_every=1))
    monkeypatch.setattr(torch, "save", real_save)
    assert load_training_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 1  # previous one intact
    with pytest.raises(FileExistsError, match="resume"):
        train_stage1(_cfg(tmp_path / "run", synth_data, save_every=1))
    # resume with DataLoader workers this time: batches depend only on the sample ids
    s = train_stage1(_cfg(tmp_path / "run", synth_data, save_every=1, resume=True, workers=2))
    assert s["finished"]
    ck = load_training_checkpoint(tmp_path / "run" / "checkpoint.pt")
    for key in ("G", "G_ema", "D", "opt_g", "opt_d"):
        assert_states_equal(ref_ck[key], ck[key], key)
    assert ck["step"] == 4 and ck["data_position"] == ref_ck["data_position"] == 4 * 2
    ref_rows = common.read_metrics(tmp_path / "ref" / "metrics.csv")
    rows = common.read_metrics(tmp_path / "run" / "metrics.csv")
    assert rows["l1"] == ref_rows["l1"] and rows["d"] == ref_rows["d"]  # steps 1..4, identical batches
    assert s["final_eval"] == ref["final_eval"]


def test_sigint_stops_cleanly_and_resume_matches(tmp_path, synth_data):
    """A signal stops at the next step boundary with a checkpoint (save_every is far away)."""
    # default_int_handler, or SIG_IGN where the tests run as a background job (which inherits it)
    before = signal.getsignal(signal.SIGINT)
    ref = train_stage1(_cfg(tmp_path / "ref", synth_data, steps=3, adv_weight=0.0))

    def interrupt(step, info):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    s = train_stage1(_cfg(tmp_path / "run", synth_data, steps=3, adv_weight=0.0), hooks={"after_step": interrupt})
    assert not s["finished"] and s["step"] == 1
    assert not (tmp_path / "run" / "animator.safetensors").exists()
    assert load_training_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 1
    # the trainer's handler is gone again: the process's own SIGINT behaviour is back
    assert signal.getsignal(signal.SIGINT) is before
    s = train_stage1(_cfg(tmp_path / "run", synth_data, steps=3, adv_weight=0.0, resume=True))
    assert s["finished"] and s["final_eval"] == ref["final_eval"]
    assert_states_equal(load_training_checkpoint(tmp_path / "ref" / "checkpoint.pt")["G"],
                        load_training_checkpoint(tmp_path / "run" / "checkpoint.pt")["G"], "G")


def test_config_errors(tmp_path, synth_data):
    with pytest.raises(ValueError, match="exactly one"):
        train_stage1(Stage1Config(out=str(tmp_path), data=None, synthetic=0))
    with pytest.raises(ValueError, match="batch"):
        train_stage1(_cfg(tmp_path / "x", synth_data, batch=0))
    with pytest.raises(ValueError, match="relative_flow needs relative_latent"):
        train_stage1(_cfg(tmp_path / "y", synth_data, relative_latent=False))


def test_relative_flow_is_the_recipe_and_old_runs_keep_absolute_flows(tmp_path, synth_data):
    from leo.animator import Animator

    train_stage1(_cfg(tmp_path / "run", synth_data, steps=1, adv_weight=0.0))
    assert Animator.from_checkpoint(tmp_path / "run" / "animator.safetensors").relative_flow
    old = {k: v for k, v in Stage1Config(out="x", synthetic=2).to_dict().items() if k != "relative_flow"}
    assert Stage1Config.from_dict(old).relative_flow is False


def test_torchrun_two_cpu_processes_match_one_process(tmp_path, synth_data):
    """`torchrun --nproc_per_node 2 -m leo train-animator` (gloo): 2 ranks x batch 2 see the same
    samples as 1 process x batch 4, so the (all-reduced) losses agree."""
    common_args = ["train-animator", "--data", str(synth_data), "--size", "32", "--width", "0.0625",
                   "--style-dim", "32", "--motion-dim", "8", "--steps", "2", "--workers", "0", "--threads", "1",
                   "--log-every", "1", "--adv-weight", "0", "--test-fraction", "0.25", "--seed", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "leo",
           *common_args, "--batch", "2", "--out", str(tmp_path / "ddp")]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    import json

    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"]
    ck = load_training_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2 and ck["data_position"] == 2 * 2
    from leo.cli import main

    assert main([*common_args, "--batch", "4", "--out", str(tmp_path / "single")]) == 0
    ddp = dict(common.read_metrics(tmp_path / "ddp" / "metrics.csv")["l1"])
    single = dict(common.read_metrics(tmp_path / "single" / "metrics.csv")["l1"])
    assert ddp[1] == pytest.approx(single[1], rel=1e-5)  # same weights, same 4 samples
    assert ddp[2] == pytest.approx(single[2], rel=1e-3)  # after one DDP-averaged Adam step


def test_stage1_on_real_taichi_clips_lowers_heldout_l1(tmp_path, lia_samples):
    """64x64, tiny width, a few dozen steps on one real clip; the other clip is held out."""
    data = tmp_path / "taichi"
    data.mkdir()
    for name in ("driving1.mp4", "driving2.mp4"):  # only the videos (the folder also holds stills)
        (data / name).symlink_to(lia_samples / "taichi" / name)
    cfg = Stage1Config(out=str(tmp_path / "run"), data=str(data), size=64, width=0.0625, style_dim=64, steps=30,
                       batch=4, adv_weight=0.0, max_frames=200, eval_pairs=16, eval_every=30, sample_every=30,
                       save_every=30, log_every=5, workers=1, threads=1, progress=False, seed=0,
                       init="random", align_corners=False, relative_latent=False, relative_flow=False, pyramid=0, lr=2e-3)
    s = train_stage1(cfg)
    assert s["finished"] and s["skipped_clips"] == 0 and "1 train, 1 test" in s["data"]
    before, after = s["initial_eval"], s["final_eval"]
    assert after["l1"] < 0.8 * before["l1"], (before, after)
    assert after["psnr"] > before["psnr"] + 1.0, (before, after)


def test_init_from_fine_tunes_a_checkpoint(tmp_path, synth_data, capsys):
    from leo.animator import Animator
    from leo.cli import main as leo_main

    torch.manual_seed(5)
    start = Animator(size=32, style_dim=32, motion_dim=8, width=0.0625)  # LIA's conventions, random weights
    start.save(tmp_path / "start.safetensors")
    seen = {}

    def first_step(step, info):
        if step == 1:  # after one step the weights moved a little from the checkpoint's, not from a copy init
            seen["dist"] = max((p - q).abs().max().item() for p, q in zip(info["G"].state_dict().values(),
                                                                            start.state_dict().values()))

    cfg = _cfg(tmp_path / "run", synth_data, steps=1, adv_weight=0.0, lr=1e-6, ema=0.0,
               init_from=str(tmp_path / "start.safetensors"))
    cfg.validate()
    train_stage1(cfg, hooks={"after_step": first_step})
    assert seen["dist"] < 1e-3
    tuned = Animator.from_checkpoint(tmp_path / "run" / "animator.safetensors")
    assert tuned.relative_flow and tuned.align_corners  # the run's conventions, the checkpoint's weights
    # another architecture, a missing file: clear errors
    with pytest.raises(ValueError, match="does not match this run"):
        train_stage1(_cfg(tmp_path / "bad", synth_data, steps=1, style_dim=16, init_from=str(tmp_path / "start.safetensors")))
    with pytest.raises(ValueError, match="init_from: no such animator checkpoint"):
        _cfg(tmp_path / "none", synth_data, init_from=str(tmp_path / "missing.pt")).validate()
    capsys.readouterr()
    assert leo_main(["train-animator", "--data", str(synth_data), "--init-from", str(tmp_path / "missing.pt"),
                     "--out", str(tmp_path / "y")]) == 2
    assert "--init-from" in capsys.readouterr().err


def test_synthetic_stream_trains_on_fresh_clips_and_holds_out_the_stored_ones(tmp_path, capsys):
    from leo.cli import main as leo_main

    def cfg(out, **kw):
        base = dict(out=str(out), synthetic=3, synthetic_frames=6, synthetic_stream=True, size=32, width=0.0625,
                    style_dim=32, motion_dim=8, steps=3, batch=2, workers=0, eval_pairs=4, eval_every=100,
                    sample_every=100, save_every=100, log_every=1, progress=False, seed=3, threads=1, adv_weight=0.0)
        return Stage1Config(**{**base, **kw})

    seen = []
    c = cfg(tmp_path / "ref")
    c.validate()
    ref = train_stage1(c, hooks={"after_step": lambda step, info: seen.append(step)})
    assert ref["finished"] and seen == [1, 2, 3] and np.isfinite(ref["final_eval"]["gain"])
    assert ref["final_eval"]["pairs"] > 0
    ref_ck = load_training_checkpoint(tmp_path / "ref" / "checkpoint.pt")
    assert ref_ck["config"]["synthetic_stream"] is True and ref_ck["data_position"] == 6

    # stopped after step 1, resumed with DataLoader workers: the same pairs, the same weights
    def interrupt(step, info):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    assert not train_stage1(cfg(tmp_path / "run"), hooks={"after_step": interrupt})["finished"]
    s = train_stage1(cfg(tmp_path / "run", resume=True, workers=2))
    assert s["finished"] and s["final_eval"] == ref["final_eval"]
    ck = load_training_checkpoint(tmp_path / "run" / "checkpoint.pt")
    for key in ("G", "G_ema", "opt_g"):
        assert_states_equal(ref_ck[key], ck[key], key)
    with pytest.raises(ValueError, match="synthetic_stream needs synthetic N or a data folder written by"):
        Stage1Config(out="x", data=str(tmp_path), synthetic_stream=True).validate()
    with pytest.raises(ValueError, match="max_gap limits pairs of stored clips"):
        Stage1Config(out="x", synthetic=2, synthetic_stream=True, max_gap=8).validate()
    with pytest.raises(ValueError, match="flip mirrors pairs of stored clips"):
        Stage1Config(out="x", synthetic=2, synthetic_stream=True, flip=True).validate()
    for bad in ({"max_gap": 0}, {"split_by": "frames"}, {"betas": (1.0, 0.99)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Stage1Config(out="x", synthetic=2, **bad).validate()
    capsys.readouterr()
    assert leo_main(["train-animator", "--data", str(tmp_path), "--synthetic-stream", "--out", str(tmp_path / "y")]) == 2
    assert "has no synthetic.json" in capsys.readouterr().err
    (tmp_path / "synthetic.json").write_text("{not json")
    assert leo_main(["train-animator", "--data", str(tmp_path), "--synthetic-stream", "--out", str(tmp_path / "y")]) == 2
    assert "unreadable synthetic-data manifest" in capsys.readouterr().err
    assert leo_main(["train-animator", "--synthetic", "2", "--synthetic-stream", "--flip", "--out", str(tmp_path / "y")]) == 2
    assert "flip mirrors pairs of stored clips" in capsys.readouterr().err


def test_synthetic_stream_continues_the_generator_of_a_make_synthetic_folder(tmp_path, monkeypatch, capsys):
    """--data DIR written by `leo make-synthetic` (the demo's way): the stream renders fresh clips with the
    folder's seed and options, numbered past its clips, and every written clip is held out."""
    import leo.data.synthetic as synthetic
    from leo.cli import main as leo_main

    data = tmp_path / "data"
    assert leo_main(["make-synthetic", "--out", str(data), "--videos", "3", "--frames", "6", "--size", "32",
                     "--seed", "7", "--format", "frames", "--body", "0", "--moves", "2"]) == 0
    made = []

    class Recorded(synthetic.SyntheticPairStream):
        def __init__(self, *args, **kwargs):
            made.append((args, kwargs))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(synthetic, "SyntheticPairStream", Recorded)
    cfg = Stage1Config(out=str(tmp_path / "run"), data=str(data), synthetic_stream=True, size=32, width=0.0625,
                       style_dim=32, motion_dim=8, steps=2, batch=2, workers=0, eval_pairs=4, eval_every=100,
                       sample_every=100, save_every=100, log_every=1, progress=True, seed=0, threads=1,
                       adv_weight=0.0)
    cfg.validate()
    capsys.readouterr()
    s = train_stage1(cfg)
    assert s["finished"] and np.isfinite(s["final_eval"]["gain"])
    assert made == [((7, 3, 6, 32), {"camera": 0.0, "body": 0.0, "moves": 2, "limbs": 1.0})]
    log = "".join(capsys.readouterr())
    assert "seed 7, clips 3 and on" in log and "held-out evaluation: 3 all clips" in log


@pytest.mark.parametrize("flags, latent, flow", [([], True, True), (["--absolute-flow"], True, False),
                                                  (["--absolute-latent"], False, False)])
def test_cli_recipe_flags_reach_the_animator(tmp_path, synth_data, flags, latent, flow):
    from leo.animator import Animator
    from leo.cli import main as leo_main

    out = tmp_path / "run"
    args = ["train-animator", "--data", str(synth_data), "--size", "32", "--width", "0.0625", "--style-dim", "32",
            "--motion-dim", "8", "--steps", "1", "--batch", "2", "--workers", "0", "--threads", "1",
            "--adv-weight", "0", "--test-fraction", "0.25", "--out", str(out), *flags]
    assert leo_main(args) == 0
    anim = Animator.from_checkpoint(out / "animator.safetensors")
    assert (anim.relative_latent, anim.relative_flow) == (latent, flow)
