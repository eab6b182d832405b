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
