"""Training infrastructure (leo.train.common) and the stage-1 trainer."""
from __future__ import annotations

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


def test_distributed_context_torchrun_gloo(tmp_path):
    res = _torchrun("""
        import torch
        from leo.train.common import DistributedContext, seed_everything
        with DistributedContext("cpu") as ctx:
            seed_everything(0)
            m = ctx.wrap(torch.nn.Linear(2, 1))
            x = torch.full((1, 2), float(ctx.rank + 1))
            m(x).sum().backward()
            g = ctx.unwrap(m).weight.grad
            mean = ctx.all_reduce_mean(torch.tensor([float(ctx.rank)]))
            ctx.barrier()
            print(f"rank={ctx.rank} ws={ctx.world_size} grad={g.tolist()} mean={mean.item()}", flush=True)
    """, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    # DDP averages gradients: d/dw of w.x for x=1 and x=2 -> 1.5 on both ranks
    assert res.stdout.count("ws=2 grad=[[1.5, 1.5]] mean=0.5") == 2, res.stdout + res.stderr
