"""The trainers' configs spell each shared setting one way (``out``, ``batch``, ``progress``); the
old spellings (``out_dir``, ``batch_size``, ``quiet``) still work for one release: as keywords with
a DeprecationWarning, and as keys of configs saved in old checkpoints (``from_dict``)."""
import dataclasses

import pytest

from leo.train.common import TrainConfig
from leo.train.diffusion_loop import LoopConfig
from leo.train.first_frame_train import FirstFrameTrainConfig
from leo.train.stage1 import Stage1Config
from leo.train.stage2 import Stage2Config

CONFIGS = {
    "stage1": lambda **kw: Stage1Config(synthetic=2, **kw),
    "lmdm": lambda **kw: Stage2Config(data="d", animator="a.safetensors", **kw),
    "first_frame": lambda **kw: FirstFrameTrainConfig(data="d", **kw),
}


def _names(cls):
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("cls", [Stage1Config, Stage2Config, FirstFrameTrainConfig, LoopConfig])
def test_one_spelling_per_concept(cls):
    assert {"out", "batch", "progress"} <= _names(cls)
    assert not {"out_dir", "batch_size", "quiet"} & _names(cls)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_new_spellings_without_warning(kind, recwarn):
    cfg = CONFIGS[kind](out="runs/x", batch=3, progress=False)
    assert (cfg.out, cfg.batch, cfg.progress) == ("runs/x", 3, False)
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_old_keywords_still_work_with_a_deprecation_warning(kind):
    with pytest.warns(DeprecationWarning, match=r"out_dir=\) is deprecated; use out="):
        cfg = CONFIGS[kind](out_dir="runs/old")
    assert cfg.out == "runs/old"
    with pytest.warns(DeprecationWarning, match=r"batch_size=\) is deprecated; use batch="):
        cfg = CONFIGS[kind](out="o", batch_size=5)
    assert cfg.batch == 5
    with pytest.warns(DeprecationWarning, match=r"quiet=\) is deprecated; use progress="):
        cfg = CONFIGS[kind](out="o", quiet=True)
    assert cfg.progress is False
    # the old keyword only sets the field; the saved config has the new names alone
    assert not {"out_dir", "batch_size", "quiet"} & set(dataclasses.asdict(cfg))


def test_out_is_still_required_where_it_was():
    with pytest.raises(TypeError, match="missing required argument: 'out'"):
        Stage2Config(data="d", animator="a")
    with pytest.raises(TypeError, match="missing required argument: 'out'"):
        FirstFrameTrainConfig(data="d")
    assert Stage2Config("d", "a", "o").out == "o"  # positionally, as before
    assert FirstFrameTrainConfig("d", "o").out == "o"
    assert Stage1Config().out == "runs/animator"
    with pytest.raises(TypeError, match="unexpected keyword argument 'batch_size'"):
        TrainConfig(batch_size=4)  # the base has no batch field


def test_from_dict_maps_the_old_keys_of_saved_configs():
    saved = dict(Stage1Config(out="o", synthetic=2).to_dict())
    del saved["progress"]
    for quiet in (True, False):
        assert Stage1Config.from_dict({**saved, "quiet": quiet}).progress is (not quiet)
    old = {"data": "d", "animator": "a", "out_dir": "o", "batch_size": 7, "window": 8, "gone": 1}
    cfg = Stage2Config.from_dict(old)
    assert (cfg.out, cfg.batch, cfg.window, cfg.progress) == ("o", 7, 8, True)
    cfg = FirstFrameTrainConfig.from_dict({"data": "d", "out_dir": "o", "batch_size": 2})
    assert (cfg.out, cfg.batch) == ("o", 2)
    # a key given both ways: the current spelling wins
    assert Stage2Config.from_dict({**old, "out": "new"}).out == "new"


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), float("inf")])
def test_every_config_refuses_a_learning_rate_that_is_not_positive_and_finite(kind, lr):
    with pytest.raises(ValueError, match="lr must be a positive, finite number"):
        CONFIGS[kind](out="runs/x", lr=lr)


@pytest.mark.parametrize("kind", ["lmdm", "first_frame"])
@pytest.mark.parametrize("decay", [-0.1, 1.0, 2.0, float("nan")])
def test_diffusion_configs_refuse_an_ema_decay_outside_0_1(kind, decay):
    with pytest.raises(ValueError, match="ema_decay must be in"):
        CONFIGS[kind](out="runs/x", ema_decay=decay)
    assert CONFIGS[kind](out="runs/x", ema_decay=0.0).ema_decay == 0.0


@pytest.mark.parametrize("name", ["l1_weight", "vgg_weight", "adv_weight", "r1"])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_stage1_refuses_loss_weights_that_are_negative_or_not_finite(name, value):
    cfg = CONFIGS["stage1"](out="runs/x", **{name: value})
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        cfg.validate()
    CONFIGS["stage1"](out="runs/x", **{name: 0.0}).validate()
