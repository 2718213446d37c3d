from __future__ import annotations

import json
from pathlib import Path

import pytest

import pneumo
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
    assert [m.name for m in members] == ["ens-lite-probes-lite0-probe", "ens-lite-probes-lite1-probe",
                                         "ens-lite-probes-lite2-probe"]
    assert {m.model.mode for m in members} == {"probe"} and {m.data.split_seed for m in members} == {3}
    best, partial = to_dict(load_config("best")), to_dict(load_config("lite0-partial"))
    assert best["eval"]["threshold_policy"] == "sensitivity:0.95"  # the shipped operating point
    assert best["data"]["markers"] == "inpaint"  # the study's lite0-partial-markers row
    best["data"]["markers"] = partial["data"]["markers"]
    assert {**best, "name": "", "eval": {}} == {**partial, "name": "", "eval": {}}
    default = to_dict(load_config("default"))  # the fourth round: default = best (the rule's pick, <= 15 min)
    assert {**default, "name": ""} == {**to_dict(load_config("best")), "name": ""}
    probe = to_dict(load_config("lite0-probe"))  # the previous default, kept for quick runs and the study's rows
    assert probe["model"]["mode"] == "probe" and probe["eval"]["threshold_policy"] == "sensitivity:0.95"


def test_overrides_are_typed_and_unknown_presets_list_the_known_ones() -> None:
    cfg = load_config("default", ["train.lr=0.003", "eval.tta=true", "data.task=3class"])
    assert cfg.train.lr == 0.003 and cfg.eval.tta is True and cfg.data.task == "3class"
    with pytest.raises(ConfigError, match="default"):
        load_config("no-such-preset")


# ---------------------------------------------------------------- typed, validated configuration (issue 13 item 4)

def test_set_values_are_converted_by_the_field_type() -> None:
    cfg = load_config("default", ["train.lr=1e-3", "train.epochs=3", "name=123", "data.limit_per_class=null",
                                  "train.amp=no", "train.max_steps_per_epoch=5", "data.val_fraction=0.2"])
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and cfg.name == "123" and cfg.data.limit_per_class is None
    assert cfg.train.amp is False and cfg.train.max_steps_per_epoch == 5 and cfg.data.val_fraction == 0.2
    assert load_config("default", ["members=default,best"]).members == ["default", "best"]  # lists: a,b or [a, b]
    assert load_config("default", ["members=[default, best]"]).members == ["default", "best"]


@pytest.mark.parametrize(("override", "message"), [
    ("train.epochs=abc", "train.epochs must be an integer"),
    ("train.epochs=2.5", "train.epochs must be an integer"),
    ("train.lr=abc", "train.lr must be a number"),
    ("train.lr=-1", "train.lr must be > 0"),
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("train.batch_size=0", "train.batch_size must be >= 1"),
    ("data.intensity=bogus", "data.intensity must be one of"),
    ("train.device=tpu", "train.device must be"),
    ("eval.threshold_policy=foo", "threshold policy"),
    ("eval.threshold_policy=sensitivity:1.5", "threshold policy"),
    ("eval.tta=maybe", "eval.tta must be true or false"),
    ("train.label_smoothing=1", "train.label_smoothing must be"),
])
def test_bad_values_fail_in_one_place_with_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config("default", [override])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override", ["train.epochs=abc", "train.lr=abc", "train.device=tpu", "train.batch_size=0"])
def test_train_cli_rejects_bad_values_with_exit_2_before_any_work(override: str, tmp_path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path / "runs"), "--name", "bad", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pneumo train: error:") and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_valid_policies_include_the_who_triage_profile() -> None:
    from pneumo.evaluate.metrics import choose_threshold, parse_policy

    assert parse_policy("triage") == ("sensitivity", 0.90)
    assert load_config("default", ["eval.threshold_policy=triage"]).eval.threshold_policy == "triage"
    y = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    p = [0.1, 0.2, 0.75, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99]
    assert choose_threshold(y, p, "triage") == choose_threshold(y, p, "sensitivity:0.90") == 0.5


def test_removed_keys_are_gone_and_old_configs_still_load_with_a_warning(tmp_path, caplog) -> None:
    import dataclasses

    import yaml

    from pneumo.config import TrainConfig

    assert not {"num_workers", "probe_c"} & {f.name for f in dataclasses.fields(TrainConfig)}
    old = tmp_path / "config.yaml"
    old.write_text(yaml.safe_dump({"name": "old", "train": {"num_workers": 4, "probe_c": 0.5, "epochs": 2}}))
    with caplog.at_level("WARNING"):
        cfg = load_config(str(old))
    assert cfg.train.epochs == 2 and cfg.name == "old"
    with pytest.raises(ConfigError, match="unknown config key train.bogus"):
        load_config("default", ["train.bogus=1"])


def test_serve_limits_are_checked_by_serve_config() -> None:
    from pneumo.config import ServeConfig

    assert ServeConfig().validate().port == 8000
    for bad in ({"port": 0}, {"max_batch": 0}, {"max_upload_mb": 0}, {"batch_window_ms": -1}):
        with pytest.raises(ConfigError):
            ServeConfig(**bad).validate()


# ---------------------------------------------------------------- a consistent CLI (issue 13 item 8)

@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_help_has_an_example_and_shows_defaults(name: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main([name, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and f"pneumo {name}" in out.split("examples:", 1)[1]


def test_defaults_are_shown_and_data_help_lists_the_real_actions(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "(default: 32)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    for action in ("scan", "split", "cache", "report", "download", "export"):
        assert f"    {action} " in out
    assert "manifest," not in out
    for action in ("scan", "split", "cache", "report", "download", "export"):
        with pytest.raises(SystemExit):
            main(["data", action, "--help"])
        assert f"pneumo data {action}" in capsys.readouterr().out.split("examples:", 1)[1]


def test_model_is_a_flag_everywhere_and_out_is_a_folder(capsys: pytest.CaptureFixture) -> None:
    from pneumo.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for name in ("evaluate", "operating-point", "explain", "predict", "export", "serve", "model-card"):
        flags = {s for a in sub.choices[name]._actions for s in a.option_strings}
        assert "--model" in flags, name
    assert "--output" in {s for a in sub.choices["predict"]._actions for s in a.option_strings}


def test_deprecated_spellings_warn_and_still_work(tiny_model, tmp_path, capsys: pytest.CaptureFixture) -> None:
    xray = tmp_path / "x.png"
    import numpy as np
    from PIL import Image

    Image.fromarray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)).save(xray)
    assert main(["predict", str(xray), "--model", str(tiny_model), "--backend", "torch", "--format", "jsonl",
                 "--out", str(tmp_path / "p.jsonl")]) == 0
    assert "--out is deprecated" in capsys.readouterr().err
    row = json.loads((tmp_path / "p.jsonl").read_text())
    assert row["label"] in ("NORMAL", "PNEUMONIA") and row["error"] is None  # JSON null, not ""
    assert main(["export", str(tiny_model), "--out", str(tmp_path / "onnx")]) == 0
    assert "positional MODEL is deprecated" in capsys.readouterr().err
    assert (tmp_path / "onnx" / "model.onnx").is_file()


def test_predict_batch_size_zero_is_a_one_line_error(tiny_model, tmp_path, capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", str(tmp_path), "--model", str(tiny_model), "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "pneumo predict: error: --batch-size must be >= 1, got 0"


def test_model_card_prints_the_shipped_card_and_a_runs_facts(tiny_model, capsys: pytest.CaptureFixture) -> None:
    assert main(["model-card"]) == 0
    out = capsys.readouterr().out
    shipped = json.loads((Path(pneumo.__file__).parent / "assets" / "default-model.json").read_text())
    assert "Research use only" in out and "efficientnet_lite0" in out
    assert f"operating point: threshold {shipped['threshold']:.4f}" in out
    assert main(["model-card", "--model", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    assert "scratch_cnn" in out and "threshold 0.5000" in out


def test_data_report_prints_its_progress(data_slice, tmp_path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "report", "--data", str(data_slice), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if line.startswith("pneumo data report: [")]
    assert len(steps) >= 4 and "scanning" in steps[0] and "done" in steps[-1]
    assert (tmp_path / "report" / "index.html").is_file()


def test_model_commands_keep_freed_memory_and_the_service_gives_it_back(tmp_path, monkeypatch, capsys) -> None:
    from pneumo import cli

    calls: list[str] = []
    monkeypatch.setattr(cli, "hold_freed_memory", lambda: calls.append("held") or True)
    missing = str(tmp_path / "no-such-model")
    assert main(["evaluate", "--model", missing, "--out", str(tmp_path / "out")]) == 2  # fails after holding: harmless
    assert calls == ["held"]
    assert main(["model-card", "--model", missing]) == 2  # reads a card, runs no model
    assert calls == ["held"]
    assert "serve" not in cli.HOLD_MEMORY and "train" not in cli.HOLD_MEMORY  # long-lived / decided by its config
    assert set(cli.HOLD_MEMORY) <= set(SUBCOMMANDS)
