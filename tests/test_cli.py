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
    for preset in ("default", "best", "lite0-finetune", "lite0-partial", "scratch-cnn"):
        cfg = load_config(preset)
        cfg.validate()
        assert cfg.name == preset


def test_overrides_are_typed_and_unknown_presets_list_the_known_ones() -> None:
    cfg = load_config("default", ["train.lr=0.003", "eval.tta=true", "data.task=3class"])
    assert cfg.train.lr == 0.003 and cfg.eval.tta is True and cfg.data.task == "3class"
    with pytest.raises(ConfigError, match="default"):
        load_config("no-such-preset")
