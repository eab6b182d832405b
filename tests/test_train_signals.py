"""Every trainer (stage 1, LMDM, first-frame) stops cleanly on SIGINT and on SIGTERM with a loadable
checkpoint, in one process and under torchrun (gloo, 2 ranks) when only one rank gets the signal,
and ``--resume`` then continues bit-identically to an uninterrupted run.

The same chain (run, stopped by a signal at step 1; resume, stopped at step 2; resume to the end)
runs in this process and, through ``python -m torch.distributed.run ... this_file.py --worker``,
in two gloo processes.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a torchrun worker script
    sys.path.insert(0, str(REPO))

from leo.train import common  # noqa: E402
from tests._util import assert_states_equal  # noqa: E402

KINDS = ("stage1", "lmdm", "first_frame")
STEPS = 4
STATE_KEYS = {"stage1": ("G", "D", "opt_g", "opt_d", "rng", "data_position"),
              "lmdm": ("model", "ema", "optimizer", "rng"),
              "first_frame": ("model", "ema", "optimizer", "rng")}
LOSS_KEY = {"stage1": "l1", "lmdm": "loss", "first_frame": "loss"}


def make_data(root: pathlib.Path) -> None:
    """Tiny frame-folder clips and a tiny animator (for the LMDM's motion codes)."""
    from leo.animator import Animator
    from leo.data.synthetic import write_dataset

    write_dataset(root / "clips", num_videos=4, num_frames=12, size=32, seed=0, fmt="frames")
    torch.manual_seed(0)
    Animator(size=32, style_dim=32, width=1 / 32).save(root / "animator.safetensors")


def train(kind: str, root: pathlib.Path, out: pathlib.Path, resume: bool, hooks: dict,
          max_minutes: float | None = None) -> dict:
    if kind == "stage1":
        from leo.train.stage1 import Stage1Config, train_stage1

        cfg = Stage1Config(out=str(out), data=str(root / "clips"), size=32, width=0.0625, style_dim=32,
                           motion_dim=8, steps=STEPS, batch=2, workers=0, eval_pairs=2, eval_clips=1,
                           eval_every=100, sample_every=100, save_every=100, log_every=1, test_fraction=0.25,
                           progress=False, seed=3, threads=1, resume=resume, max_minutes=max_minutes)
        return train_stage1(cfg, hooks=hooks)
    if kind == "lmdm":
        from leo.train.stage2 import Stage2Config, train_lmdm

        cfg = Stage2Config(data=str(root / "clips"), animator=str(root / "animator.safetensors"), out=str(out),
                           cache_dir=str(root / "code_cache"), window=8, channels=16, channel_mult=(1, 2),
                           head_dim=16, steps=STEPS, batch=4, lr=2e-3, save_every=100, log_every=1, seed=1,
                           device="cpu", progress=False, resume=resume, max_minutes=max_minutes)
        return train_lmdm(cfg, hooks=hooks)
    from leo.train.first_frame_train import FirstFrameTrainConfig, train_first_frame

    cfg = FirstFrameTrainConfig(data=str(root / "clips"), out=str(out), image_size=16, base_channels=8,
                                channel_mults=(1, 2), attn_resolutions=(8,), frame_stride=2, steps=STEPS,
                                batch=4, lr=2e-3, save_every=100, log_every=1, seed=3, device="cpu",
                                sample_count=0, resume=resume, max_minutes=max_minutes)
    return train_first_frame(cfg, hooks=hooks)


def run_chain(kind: str, root: pathlib.Path, out: pathlib.Path, plan, rank: int = 0) -> list[dict]:
    """Reference run (``out/ref``) and the interrupted chain (``out/run``): for each
    ``(step, signum, to_rank)`` of ``plan`` a run that signals itself on ``to_rank`` after ``step``,
    then a final resume. Returns this rank's ``{"step", "finished", "checkpoint_step"}`` per run."""
    train(kind, root, out / "ref", False, {})
    results = []
    for i, (at, signum, to_rank) in enumerate([*plan, (None, None, None)]):
        def after_step(step, info, at=at, signum=signum, to_rank=to_rank):
            if step == at and rank == to_rank:
                os.kill(os.getpid(), signum)

        s = train(kind, root, out / "run", i > 0, {"after_step": after_step})
        ck = common.load_training_checkpoint(out / "run" / common.CHECKPOINT_NAME)  # loadable, every rank
        results.append({"step": s["step"], "finished": s["finished"], "checkpoint_step": ck["step"]})
    return results


def check_chain(kind: str, out: pathlib.Path, results: list[dict], plan) -> None:
    stops = [at for at, _, _ in plan]
    assert [r["step"] for r in results] == [*stops, STEPS], results
    assert [r["finished"] for r in results] == [False] * len(stops) + [True], results
    assert [r["checkpoint_step"] for r in results] == [*stops, STEPS], results
    ref = common.load_training_checkpoint(out / "ref" / common.CHECKPOINT_NAME)
    got = common.load_training_checkpoint(out / "run" / common.CHECKPOINT_NAME)
    assert ref["step"] == got["step"] == STEPS
    for key in STATE_KEYS[kind]:
        assert_states_equal(ref[key], got[key], key)
    loss = LOSS_KEY[kind]  # one consistent history, step by step the uninterrupted run's
    ref_rows = common.read_metrics(out / "ref" / "metrics.csv")[loss]
    assert common.read_metrics(out / "run" / "metrics.csv")[loss] == ref_rows
    assert [s for s, _ in ref_rows] == list(range(1, STEPS + 1))


# --------------------------------------------------------------------------- tests

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    make_data(root)
    return root


@pytest.mark.parametrize("kind", KINDS)
def test_sigint_and_sigterm_stop_with_checkpoint_and_resume_exactly(kind, data_root, tmp_path):
    plan = [(1, signal.SIGINT, 0), (2, signal.SIGTERM, 0)]
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    results = run_chain(kind, data_root, tmp_path, plan)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored
    check_chain(kind, tmp_path, results, plan)


WEIGHTS = {"stage1": "animator.safetensors", "lmdm": "lmdm.safetensors", "first_frame": "first_frame.safetensors"}


@pytest.mark.parametrize("kind", KINDS)
def test_time_budget_ends_the_run_exported_and_resume_continues_exactly(kind, data_root, tmp_path):
    """--max-minutes: a budget that the first step already spends ends the run after that step as
    a finished run (weights exported, checkpoint at step 1, handlers restored); a resume without a
    budget then trains on to --steps, bit-identical to an uninterrupted run."""
    before = signal.getsignal(signal.SIGINT)
    train(kind, data_root, tmp_path / "ref", False, {})
    s = train(kind, data_root, tmp_path / "run", False, {}, max_minutes=1e-9)
    assert s["step"] == 1 and s["finished"] and s["ended_by"] == "max_minutes", s
    assert (tmp_path / "run" / WEIGHTS[kind]).is_file()
    assert signal.getsignal(signal.SIGINT) is before
    if kind == "stage1":  # the run's end is evaluated, as a run that reached --steps is
        assert s["final_eval"]["l1"] > 0
    final = train(kind, data_root, tmp_path / "run", True, {})
    assert final["ended_by"] == "steps"
    resumed = {"step": final["step"], "finished": final["finished"],
               "checkpoint_step": common.load_training_checkpoint(tmp_path / "run" / common.CHECKPOINT_NAME)["step"]}
    check_chain(kind, tmp_path, [{"step": 1, "finished": False, "checkpoint_step": 1}, resumed],
                [(1, None, None)])


def test_max_minutes_must_be_positive():
    from leo.train.stage1 import Stage1Config

    for bad in (0, -1.0, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValueError, match="max_minutes"):
            Stage1Config(out="x", data="y", max_minutes=bad)


def old_spellings(kind: str, config: dict) -> dict:
    """A checkpoint's config as the trainers saved it before the names were shared: stage 1 had
    ``quiet`` (no ``progress``), the diffusion loop ``out_dir`` and ``batch_size`` (no ``progress``)."""
    config = dict(config)
    progress = config.pop("progress")
    if kind == "stage1":
        return {**config, "quiet": not progress}
    renamed = {"out": "out_dir", "batch": "batch_size"}
    return {renamed.get(k, k): v for k, v in config.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_resume_of_a_checkpoint_saved_with_the_old_config_names_is_exact(kind, data_root, tmp_path):
    plan = [(2, signal.SIGINT, 0)]
    train(kind, data_root, tmp_path / "ref", False, {})

    def after_step(step, info):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    first = train(kind, data_root, tmp_path / "run", False, {"after_step": after_step})
    path = tmp_path / "run" / common.CHECKPOINT_NAME
    payload = common.load_training_checkpoint(path)
    assert {"out", "batch", "progress"} <= set(payload["config"])  # saved with the new names
    payload["config"] = old_spellings(kind, payload["config"])
    common.save_training_checkpoint(path, payload)
    final = train(kind, data_root, tmp_path / "run", True, {})
    resumed = {"step": final["step"], "finished": final["finished"],
               "checkpoint_step": common.load_training_checkpoint(path)["step"]}
    check_chain(kind, tmp_path, [{"step": 2, "finished": False, "checkpoint_step": 2}, resumed], plan)
    assert first["step"] == 2 and not first["finished"]


def test_torchrun_signal_to_one_rank_stops_every_rank(data_root, tmp_path):
    """2 gloo ranks: SIGTERM reaches rank 1 only (then SIGINT rank 0 only); both ranks stop after the
    same step (the flag is all-reduced), the checkpoint is written, and resume is exact."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(pathlib.Path(__file__).resolve()), "--worker", str(data_root), str(tmp_path)]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    for kind in KINDS:
        per_rank = [json.loads((tmp_path / kind / f"rank{r}.json").read_text()) for r in range(2)]
        assert per_rank[0] == per_rank[1], per_rank  # the ranks agreed at every stop
        check_chain(kind, tmp_path / kind, per_rank[0], DDP_PLAN)
        ck = common.load_training_checkpoint(tmp_path / kind / "run" / common.CHECKPOINT_NAME)
        assert len(ck["rng"]) == 2  # every rank's RNG state


DDP_PLAN = [(1, signal.SIGTERM, 1), (2, signal.SIGINT, 0)]


def _worker(root: str, out: str) -> None:
    import datetime

    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    # one group for all the runs (each trainer's context reuses it); mismatched collectives (ranks
    # disagreeing about a stop) fail after 60 s instead of hanging
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    try:
        for kind in KINDS:
            results = run_chain(kind, pathlib.Path(root), pathlib.Path(out) / kind, DDP_PLAN, rank=rank)
            (pathlib.Path(out) / kind / f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(*sys.argv[2:4])
