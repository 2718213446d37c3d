"""The typed config schema (pydantic): `--set` text converted by the field type, bounds and unknown keys as one
ConfigError line naming the dotted key (the flag for `ServeConfig`), old run configs still loading."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from pneumo import config
from pneumo.config import AugmentConfig, RunConfig, ServeConfig, TrainConfig, from_dict, load_config, to_dict
from pneumo.errors import ConfigError
from pneumo.models.sidecar import DEFAULT_MODEL


def one_line_error(preset: str | None, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(preset, overrides)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_set_strings_become_floats_bools_nones_and_lists() -> None:
    cfg = load_config("default", ["train.lr=1e-3", "train.weight_decay=0", "train.amp=false", "eval.tta=yes",
                                  "data.limit_per_class=null", "train.max_steps_per_epoch=none", "name=123",
                                  "members=lite0-probe, lite1-probe", "data.cache_dir=~", "train.epochs=3",
                                  "data.val_fraction=0.2", "data.task=3class"])
    assert cfg.train.epochs == 3 and cfg.data.val_fraction == 0.2 and cfg.data.task == "3class"
    assert load_config("default", ["train.max_steps_per_epoch=5"]).train.max_steps_per_epoch == 5
    assert cfg.train.lr == 0.001 and type(cfg.train.lr) is float  # YAML 1.1 reads 1e-3 as a string
    assert cfg.train.weight_decay == 0.0 and type(cfg.train.weight_decay) is float
    assert cfg.train.amp is False and cfg.eval.tta is True
    assert cfg.data.limit_per_class is None and cfg.train.max_steps_per_epoch is None and cfg.data.cache_dir is None
    assert cfg.name == "123" and cfg.members == ["lite0-probe", "lite1-probe"]
    assert load_config("default", ["members=[lite0-probe, lite1-probe]"]).members == ["lite0-probe", "lite1-probe"]
    assert ServeConfig(cors_origins="https://a.org,https://b.org").cors_origins == ["https://a.org", "https://b.org"]


@pytest.mark.parametrize(("override", "message"), [
    ("train.epochs=abc", "train.epochs must be an integer"),
    ("train.lr=abc", "train.lr must be a number"),
    ("train.lr=-1", "train.lr must be > 0"),
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("train.batch_size=0", "train.batch_size must be >= 1"),
    ("data.intensity=bogus", "data.intensity must be one of"),
    ("train.device=tpu", r"device \(train.device, --device\) must be"),
    ("eval.threshold_policy=foo", "threshold policy"),
    ("eval.threshold_policy=sensitivity:1.5", "threshold policy"),
    ("eval.tta=maybe", "eval.tta must be true or false"),
    ("train.augment.erase=2", "train.augment.erase must be"),
])
def test_bad_strings_and_choices_fail_in_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config("default", [override])
    assert "\n" not in str(info.value)


def test_an_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="default"):
        load_config("no-such-preset")


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "nan"])
def test_infinite_and_nan_floats_are_refused(value: str) -> None:
    message = one_line_error("default", [f"train.lr={value}"])
    assert message.startswith("train.lr must be a finite number, got")


@pytest.mark.parametrize(("override", "expected"), [
    ("data.val_fraction=0.7", "data.val_fraction must be < 0.5, got 0.7"),
    ("data.val_fraction=0", "data.val_fraction must be > 0, got 0"),
    ("data.image_size=16", "data.image_size must be >= 32, got 16"),
    ("data.limit_per_class=0", "data.limit_per_class must be >= 1, got 0"),
    ("model.drop_rate=1", "model.drop_rate must be < 1, got 1"),
    ("train.augment.noise=0.9", "train.augment.noise must be <= 0.5, got 0.9"),
    ("train.augment.jpeg=98", "train.augment.jpeg must be <= 95, got 98"),  # qualities drawn in [jpeg, 95]
    ("eval.ece_bins=0", "eval.ece_bins must be >= 1, got 0"),
    ("data.task=4class", "data.task must be one of 'binary' or '3class', got '4class'"),
    ("train.epochs=2.5", "train.epochs must be an integer, got 2.5"),
    ("train.amp=maybe", "train.amp must be true or false, got 'maybe'"),
    ("train=5", "train must be a mapping, got 5"),
    ("train.epochs=true", "train.epochs must be an integer, got True"),  # not 1 epoch (pydantic's lax mode)
    ("train.lr=false", "train.lr must be a number, got False"),
    ("data.limit_per_class=yes", "data.limit_per_class must be an integer, got True"),  # YAML 1.1's yes
    ("train.seed=true", "train.seed must be an integer, got True"),
])
def test_a_value_out_of_range_is_one_line_naming_the_key_and_the_value(override: str, expected: str) -> None:
    assert one_line_error("default", [override]) == expected


def test_unknown_keys_are_refused_with_the_known_ones_of_that_section() -> None:
    message = one_line_error("default", ["train.lrr=0.1"])
    assert message.startswith("unknown config key train.lrr; known: epochs, batch_size, lr,")
    assert one_line_error("default", ["train.augment.flip=true"]).startswith("unknown config key train.augment.flip;")
    assert one_line_error("default", ["dataa.root=x"]).startswith("unknown config key dataa; known: name, out_dir,")
    with pytest.raises(ConfigError, match="unknown config key model.nam"):
        from_dict({"model": {"nam": "resnet18"}})


def test_a_section_built_directly_names_its_dotted_key() -> None:
    with pytest.raises(ConfigError, match=r"^train\.batch_size must be >= 1, got 0$"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match=r"^train\.augment\.erase must be <= 1, got 2$"):
        AugmentConfig(erase=2)


def test_validate_checks_values_assigned_after_loading() -> None:
    cfg = load_config("default")
    cfg.data.root = "/somewhere"  # assignment stays plain attribute access
    assert cfg.validate() is cfg
    cfg.train.epochs = 0
    with pytest.raises(ConfigError, match="train.epochs must be >= 1, got 0"):
        cfg.validate()


def test_serve_limits_name_the_flag_and_the_budget_must_hold_the_largest_upload() -> None:
    assert ServeConfig(max_upload_mb=20, upload_budget_mb=22.5).upload_budget_mb == 22.5  # 9/8 of the largest upload
    with pytest.raises(ConfigError, match=r"^--upload-budget-mb must be at least 9/8 x --max-upload-mb .*got 22 < 22.5$"):
        ServeConfig(max_upload_mb=20, upload_budget_mb=22)
    with pytest.raises(ConfigError, match=r"^--port must be <= 65535, got 70000$"):
        ServeConfig(port=70000)
    with pytest.raises(ConfigError, match=r"^--header-timeout-s must be > 0, got 0$"):
        ServeConfig(header_timeout_s=0)
    with pytest.raises(ConfigError, match=r"^--queue-timeout-s must be a finite number"):
        ServeConfig(queue_timeout_s=float("inf"))


def test_the_shipped_models_stored_config_loads_and_round_trips() -> None:
    stored = json.loads(DEFAULT_MODEL.read_text())["config"]
    cfg = from_dict(stored)  # it holds removed study keys (data.train_sources, train.channels_last, ...)
    assert cfg.model.mode == stored["model"]["mode"] and cfg.train.epochs == stored["train"]["epochs"]
    assert from_dict(to_dict(cfg)) == cfg
    assert to_dict(cfg) == yaml.safe_load(config.dump_yaml(cfg))


def test_a_stored_config_with_a_removed_key_warns_once_and_loads(caplog: pytest.LogCaptureFixture) -> None:
    config._WARNED.clear()
    stored = {"name": "old", "train": {"num_workers": 4, "epochs": 2}, "eval": {"val_view": "original"}}
    with caplog.at_level(logging.WARNING, logger="pneumo.config"):
        cfg = from_dict(stored)
        from_dict(stored)  # a second load in the same process stays quiet
    assert cfg.train.epochs == 2 and cfg.name == "old" and stored["train"]["num_workers"] == 4  # input untouched
    warned = sorted(r.getMessage().split()[2] for r in caplog.records)
    assert warned == ["eval.val_view", "train.num_workers"]
    assert not {"num_workers", "probe_c"} & set(TrainConfig.model_fields)  # removed, not merely hidden


def test_a_stored_config_whose_weights_file_is_gone_loads_but_cannot_start_a_run() -> None:
    stored = to_dict(RunConfig())
    stored["model"]["weights"] = "/no/such/weights.safetensors"
    cfg = from_dict(stored)  # reading an old run folder never needs its pretrained weights
    with pytest.raises(ConfigError, match="model.weights: file not found: '/no/such/weights.safetensors'"):
        cfg.validate()
    assert one_line_error("default", ["model.mode=probe", "model.weights=none"]).startswith(
        "mode=probe freezes layers, which needs pretrained weights")
    assert one_line_error("default", ["members=[lite0-probe, no-such-preset]"]).startswith(
        "unknown preset 'no-such-preset'")


@pytest.mark.parametrize("key", ["train.seed", "data.split_seed", "eval.bootstrap_seed"])
def test_a_negative_seed_is_refused_before_any_work(key: str) -> None:
    """It passed validation and failed later inside NumPy/PyTorch with a traceback (API review)."""
    assert one_line_error("default", [f"{key}=-1"]) == f"{key} must be >= 0, got -1"


def test_a_models_recorded_cache_folder_is_used_only_where_it_is_this_users_and_writable(tmp_path: Path) -> None:
    """A model's config records its trainer's `data.cache_dir`: kept for one's own run, dropped (this machine's
    $PNEUMO_CACHE) where absent or another user's (a cache review; root may write anyone's folder)."""
    import os

    from pneumo.config import model_config

    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.mkdir()
    assert model_config({"data": {"cache_dir": str(mine)}}).data.cache_dir == str(mine)
    assert model_config({"data": {"cache_dir": str(tmp_path / "absent")}}).data.cache_dir is None
    if os.getuid() == 0:  # only root can give a folder away
        theirs.mkdir()
        os.chown(theirs, 12345, 12345)
        assert model_config({"data": {"cache_dir": str(theirs)}}).data.cache_dir is None
