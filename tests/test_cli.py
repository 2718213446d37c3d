from __future__ import annotations

import pytest

from pneumo.cli import SUBCOMMANDS, main
from pneumo.config import load_config
from pneumo.errors import ConfigError


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_subcommand_explains_itself(name: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pneumo " + name) and len(out.splitlines()) > 3


def test_no_subcommand_prints_help_and_fails(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 2
    assert "usage: pneumo" in capsys.readouterr().out


def test_every_preset_loads_and_validates() -> None:
    from pneumo.config import PRESET_DIR, member_configs

    presets = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    assert {"default", "best", "lite0-finetune", "lite0-partial", "scratch-cnn"} <= set(presets)
    for preset in presets:
        cfg = load_config(preset)
        for member in member_configs(cfg, []) if cfg.members else [cfg]:
            member.validate()
        assert cfg.name == preset


def test_the_ensemble_preset_lists_the_three_lite_probes_and_best_equals_lite0_partial() -> None:
    from pneumo.config import member_configs, to_dict

    members = member_configs(load_config("ens-lite-probes"), ["data.split_seed=3"])
    assert [m.model.name for m in members] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert [m.name for m in members] == ["ens-lite-probes-default", "ens-lite-probes-lite1-probe",
                                         "ens-lite-probes-lite2-probe"]
    assert {m.model.mode for m in members} == {"probe"} and {m.data.split_seed for m in members} == {3}
    best, partial = to_dict(load_config("best")), to_dict(load_config("lite0-partial"))
    assert {**best, "name": ""} == {**partial, "name": ""}


def test_overrides_are_typed_and_unknown_presets_list_the_known_ones() -> None:
    cfg = load_config("default", ["train.lr=0.003", "eval.tta=true", "data.task=3class"])
    assert cfg.train.lr == 0.003 and cfg.eval.tta is True and cfg.data.task == "3class"
    with pytest.raises(ConfigError, match="default"):
        load_config("no-such-preset")
