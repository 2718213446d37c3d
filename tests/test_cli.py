from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from sidecars import signed

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
def test_every_subcommand_explains_itself_with_an_example(name: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pneumo " + name) and len(out.splitlines()) > 3
    assert "examples:" in out and f"pneumo {name}" in out.split("examples:", 1)[1]


def test_no_subcommand_prints_help_and_fails(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 2
    assert "usage: pneumo" in capsys.readouterr().out


def test_every_preset_loads_and_validates() -> None:
    from pneumo.config import PRESET_DIR
    from pneumo.train.run import member_configs

    presets = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    assert {"default", "lite0-finetune", "lite0-partial", "scratch-cnn"} <= set(presets)
    assert "best" not in presets  # it was the same configuration as default
    for preset in presets:
        cfg = load_config(preset)
        for member in member_configs(cfg, []) if cfg.members else [cfg]:
            member.validate()
        assert cfg.name == preset


def test_members_that_choose_their_thresholds_by_different_policies_are_refused_before_training(tmp_path) -> None:
    """A CLI review: `pneumo train` of such an ensemble trained and evaluated every member, then failed with a hint
    naming a flag train does not have; the ensemble's own policy (its preset's, or --set) settles it."""
    from pneumo.errors import ConfigError
    from pneumo.train.run import member_configs

    for name, policy in (("a", "youden"), ("b", "sensitivity:0.95")):
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\nmodel: {{mode: probe}}\neval: {{threshold_policy: '{policy}'}}\n")
    ensemble = tmp_path / "ens.yaml"
    ensemble.write_text(f"name: ens\nmembers: ['{tmp_path / 'a.yaml'}', '{tmp_path / 'b.yaml'}']\n")
    with pytest.raises(ConfigError, match=r"different policies \(sensitivity:0.95, youden\).*--set eval.threshold_policy"):
        member_configs(load_config(str(ensemble)), [])
    assert len(member_configs(load_config(str(ensemble), ["eval.threshold_policy=youden"]),
                              ["eval.threshold_policy=youden"])) == 2
    ensemble.write_text(ensemble.read_text() + "eval: {threshold_policy: youden}\n")
    assert len(member_configs(load_config(str(ensemble)), [])) == 2


def test_the_ensemble_preset_lists_the_three_lite_probes_and_default_is_lite0_partial_with_markers() -> None:
    from pneumo.config import to_dict
    from pneumo.train.run import member_configs

    members = member_configs(load_config("ens-lite-probes"), ["data.split_seed=3"])
    assert [m.model.name for m in members] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert [m.name for m in members] == ["ens-lite-probes-lite0-probe", "ens-lite-probes-lite1-probe",
                                         "ens-lite-probes-lite2-probe"]
    assert {m.model.mode for m in members} == {"probe"} and {m.data.split_seed for m in members} == {3}
    default, partial = to_dict(load_config("default")), to_dict(load_config("lite0-partial"))
    assert default["eval"]["threshold_policy"] == "sensitivity:0.95"  # the shipped operating point
    assert default["data"]["markers"] == "inpaint-text"  # markers (the study's pick) and corner text (issue 23)
    augment = default["train"]["augment"]  # issue 22 item 4's pick: the acquisition-shift augmentation
    assert (augment["noise"], augment["resolution"], augment["jpeg"], augment["collimation"]) == (0.05, 0.6, 20, 0.12)
    default["data"]["markers"] = partial["data"]["markers"]
    default["train"]["augment"] = partial["train"]["augment"]
    assert {**default, "name": "", "eval": {}} == {**partial, "name": "", "eval": {}}
    probe = to_dict(load_config("lite0-probe"))  # the previous default, kept for quick runs and the study's rows
    assert probe["model"]["mode"] == "probe" and probe["eval"]["threshold_policy"] == "sensitivity:0.95"


# ---------------------------------------------------------------- typed, validated configuration (issue 13 item 4)


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
    assert choose_threshold(y, p, "triage") == choose_threshold(y, p, "sensitivity:0.90") == pytest.approx(0.5 - 1e-5)


STUDY_KEYS = {"data": {"train_sources": "all"}, "eval": {"val_view": "all"},
              "train": {"mixup": 0.0, "ema": 0.0, "label_smoothing": 0.0, "teachers": [], "distill_weight": 0.5,
                        "distill_temperature": 2.0, "channels_last": True, "depthwise_fp32": False}}
STUDY_SET = {"data": {"train_sources": "original"}, "eval": {"val_view": "original"},
             "train": {"mixup": 0.2, "ema": 0.999, "label_smoothing": 0.1, "teachers": ["runs/a"],
                       "distill_weight": 0.7, "distill_temperature": 4.0, "channels_last": False,
                       "depthwise_fp32": True}}


def _load_study_run(tmp_path, caplog, keys: dict) -> tuple:
    import yaml

    from pneumo import config

    old = tmp_path / "config.yaml"  # as a run folder of the study wrote it
    old.write_text(yaml.safe_dump({"name": "old-study-run", **{s: {**k, "seed": 3} if s == "train" else k
                                                               for s, k in keys.items()}}))
    config._WARNED.clear()
    caplog.clear()
    with caplog.at_level("WARNING", logger="pneumo.config"):
        cfg = load_config(str(old))
    return cfg, [r.getMessage() for r in caplog.records if "is ignored" in r.getMessage()]


def test_a_run_config_with_the_study_options_still_loads_with_one_line_warnings(tmp_path, caplog) -> None:
    from pneumo import config

    for section, keys in STUDY_KEYS.items():  # gone from the typed config ...
        cls = type(getattr(config.RunConfig(), section))
        assert not set(keys) & set(cls.model_fields), section
    # ... a stored config at their old defaults (the shipped model's) loads silently: the product runs as it did
    cfg, warned = _load_study_run(tmp_path, caplog, STUDY_KEYS)
    assert cfg.name == "old-study-run" and cfg.train.seed == 3 and warned == []
    # one that set them to something else loads with one line per key: that run trained another configuration
    cfg, warned = _load_study_run(tmp_path, caplog, STUDY_SET)
    expected = {f"{s}.{k}" for s, keys in STUDY_SET.items() for k in keys}
    assert cfg.train.seed == 3
    assert {m.split()[2] for m in warned} == expected and all("\n" not in m for m in warned)
    with pytest.raises(ConfigError, match="unknown config key train.mixup_alpha"):  # a typo is still an error
        load_config("default", ["train.mixup_alpha=0.2"])
    assert load_config("default", ["train.mixup=0"]).train == load_config("default").train  # its old default: fine
    for asked in ("train.mixup=0.2", "train.teachers=runs/a", "train.channels_last=false", "eval.val_view=original"):
        with pytest.raises(ConfigError, match="left the product with the study") as info:  # a new run asks for it
            load_config("default", [asked])
        assert "\n" not in str(info.value)


def test_serve_limits_are_checked_by_serve_config() -> None:
    from pneumo.config import ServeConfig

    assert ServeConfig().validate().port == 8000
    for bad in ({"port": 0}, {"max_batch": 0}, {"max_upload_mb": 0}, {"batch_window_ms": -1}):
        with pytest.raises(ConfigError):
            ServeConfig(**bad).validate()


# ---------------------------------------------------------------- a consistent CLI (issue 13 item 8)


def test_defaults_are_shown_and_data_help_lists_the_real_actions(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "(default: 32)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    for action in ("scan", "split", "cache", "report", "download"):
        assert f"    {action} " in out
    assert "manifest," not in out and "export" not in out
    for action in ("scan", "split", "cache", "report", "download"):
        with pytest.raises(SystemExit):
            main(["data", action, "--help"])
        assert f"pneumo data {action}" in capsys.readouterr().out.split("examples:", 1)[1]


def _flags(*path: str) -> set[str]:
    """The option strings of the (sub)command ``path``, e.g. ("data", "scan")."""
    import argparse

    from pneumo.cli import build_parser

    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return {s for a in parser._actions for s in a.option_strings}


def test_one_vocabulary_model_arch_dataset_data_and_threshold_policy() -> None:
    for name in ("evaluate", "operating-point", "explain", "predict", "export", "serve", "model-card", "adapt"):
        assert "--model" in _flags(name), name  # always a trained model
    assert "--model" in _flags("ood", "fit") and "--model" in _flags("site", "check")
    train = _flags("train")
    assert "--arch" in train and "--model" not in train  # an architecture is not a model
    training_dataset = [("train",), ("evaluate",), ("operating-point",), ("ood", "fit"), ("adapt",),
                        ("site", "check"), *[("data", a) for a in ("scan", "split", "cache", "report")]]
    for path in training_dataset:
        assert "--dataset" in _flags(*path), path
    for path in [("train",), ("ood", "fit"), *[("data", a) for a in ("scan", "split", "cache", "report")]]:
        assert "--data" not in _flags(*path), path  # --data is labelled or input images, never the training set
    for path in [("evaluate",), ("operating-point",), ("adapt",), ("site", "check")]:
        assert "--data" in _flags(*path), path
    for name in ("evaluate", "operating-point", "adapt"):
        assert "--threshold-policy" in _flags(name) and "--policy" not in _flags(name), name
    cache = _flags("data", "cache")
    assert "--resize-policy" in cache and "--policy" not in cache
    assert "--output" in _flags("predict") and "--out" not in _flags("predict")


@pytest.mark.parametrize("argv", [
    ["predict", "x.png", "--out", "p.csv"],  # --out is a folder; predict writes --output FILE
    ["export", "runs/x"],  # a positional model
    ["evaluate", "runs/x"],
    ["ood", "fit", "runs/x"],
    ["export", "--int8"],
    ["train", "--out-dir", "runs"],
    ["train", "--model", "resnet18"],  # the architecture is --arch
    ["train", "--data", "chest_xray"],  # not even as an abbreviation of --dataset
    ["ood", "fit", "--model", "m", "--data", "chest_xray"],
    ["data", "scan", "--data", "chest_xray"],
    ["data", "scan", "--out", "m.csv"],
    ["data", "cache", "--policy", "letterbox"],
    ["data", "export", "--out", "compact"],
    ["operating-point", "--policy", "youden", "--out", "o"],
    ["operating-point", "--threshold-policy", "youden", "--val", "v", "--out", "o"],
])
def test_old_spellings_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_export_takes_an_output_folder_only(tiny_model, tmp_path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", "--model", str(tiny_model), "--out", str(tmp_path / "onnx")]) == 0
    assert (tmp_path / "onnx" / "model.onnx").is_file() and (tmp_path / "onnx" / "model.json").is_file()
    # the folder is what gets deployed: a run, which has no card file, gets the card built from its sidecar (README)
    assert not tiny_model.with_suffix(".md").exists()
    assert (tmp_path / "onnx" / "model.md").read_text().startswith("# Model card:")
    from pneumo.infer.card import card_markdown  # ... recorded in the copy's sidecar, so the copy shows it

    assert card_markdown(tmp_path / "onnx" / "model.json") == (tmp_path / "onnx" / "model.md").read_text()
    assert main(["export", "--model", str(tiny_model), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--out is a folder" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()


def test_ood_fit_needs_its_model(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:  # the parser says so (its usage showed --model as optional)
        main(["ood", "fit"])
    assert exc.value.code == 2 and "the following arguments are required: --model" in capsys.readouterr().err


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
    # the scale of the threshold and the in-painting step, which an ONNX user must apply before the network
    from pneumo.models.scores import threshold_on_calibrated_scale

    on_calibrated = threshold_on_calibrated_scale(shipped["threshold"], shipped["temperature"])
    assert f"({on_calibrated:.4f} on the calibrated scale)" in out and "burnt-in markers inpaint-text" in out
    card_row = next(line for line in out.splitlines() if line.startswith("| threshold |"))
    assert f"{shipped['threshold']:.4f} on the uncalibrated P(pneumonia)" in card_row and f"{on_calibrated:.4f}" in card_row
    assert main(["model-card", "--model", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    assert "scratch_cnn" in out and "threshold 0.5000" in out


def test_model_card_checks_the_model_it_describes(tiny_model, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A card printed the recorded SHA-256 of weights that no longer match it (exit 0), and a broken sidecar was a
    traceback: the card checks the sidecar and the weights as predict does, in one line."""
    import shutil

    for name, edit in (("flipped", lambda folder: _flip_byte(folder / "model.safetensors")),
                       ("threshold", lambda folder: _set(folder / "model.json", threshold="high"))):
        folder = tmp_path / name
        shutil.copytree(tiny_model.parent, folder)
        edit(folder)
        assert main(["model-card", "--model", str(folder)]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("pneumo model-card: error:"), err


def test_model_card_refuses_a_folder_that_lost_or_changed_its_checks(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """A copy of the shipped model without its OOD statistics, or with another orientation check, got its card
    (exit 0) while predict and serve refuse it: the card checks them as they do, in one line naming the file."""
    import shutil

    assets = Path(pneumo.__file__).parent / "assets"
    for name, edit in (("ood", lambda folder: (folder / "default-model.ood.safetensors").unlink()),
                       ("orient", lambda folder: _flip_byte(folder / "default-model.orient.safetensors"))):
        folder = tmp_path / name
        folder.mkdir()
        for file in assets.glob("default-model.*"):
            shutil.copyfile(file, folder / file.name)
        assert main(["model-card", "--model", str(folder)]) == 0, name  # the whole copy is fine
        capsys.readouterr()
        edit(folder)
        assert main(["model-card", "--model", str(folder)]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("pneumo model-card: error:") and f"default-model.{name}" in err[0]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _set(path: Path, **values: object) -> None:
    path.write_text(json.dumps(signed({**json.loads(path.read_text()), **values})))


def test_data_report_prints_its_progress(data_slice, tmp_path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "report", "--dataset", str(data_slice), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if line.startswith("pneumo data report: [")]
    assert len(steps) >= 4 and "scanning" in steps[0] and "done" in steps[-1]
    assert (tmp_path / "report" / "index.html").is_file()


def test_data_split_split_seed_is_the_split_a_run_with_that_data_split_seed_trains_on(data_slice, tmp_path) -> None:
    """`--split-seed` (it was `--seed`, which read as train's training seed): the folds written are those of
    `data.split_seed`, and another seed gives another val fold."""
    import pandas as pd

    from pneumo.data.splits import folds_for

    for seed in (0, 3):
        assert main(["data", "split", "--dataset", str(data_slice), "--split-seed", str(seed), "--output",
                     str(tmp_path / f"folds{seed}.csv")]) == 0
    written = {seed: pd.read_csv(tmp_path / f"folds{seed}.csv") for seed in (0, 3)}
    expected = folds_for(load_config("default", [f"data.root={data_slice}", "data.split_seed=3"]))
    assert sorted(written[3].loc[written[3]["fold"] == "val", "path"]) == sorted(expected.loc[expected["fold"] == "val",
                                                                                              "path"])
    assert set(written[0].loc[written[0]["fold"] == "val", "path"]) != set(written[3].loc[written[3]["fold"] == "val",
                                                                                        "path"])


@pytest.mark.parametrize("argv", [["data", "split", "--split-seed", "-1"], ["data", "report", "--split-seed", "-1"],
                                  ["data", "split", "--val-fraction", "0.7"],
                                  ["data", "cache", "--size", "0"], ["data", "cache", "--size", "-3"],
                                  ["data", "cache", "--size", "5000"]])
def test_data_commands_refuse_a_negative_seed_or_an_image_size_out_of_range_in_one_line(
        argv, data_slice, tmp_path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    """A negative seed ended in NumPy's traceback, --size -3 in 'negative dimensions', --size 0 decoded every image
    and then advised a rescan (data review); each is refused before the dataset is scanned (a CLI review)."""
    from pneumo.commands import data

    monkeypatch.setattr(data, "scan_dataset", lambda *a, **k: pytest.fail("scanned before the options' check"))
    monkeypatch.setenv("PNEUMO_CACHE", str(tmp_path / "cache"))
    out = ["--out", str(tmp_path / "report")] if argv[1] == "report" else []
    assert main([*argv, "--dataset", str(data_slice), *out]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("pneumo data report: [")]
    assert len(err) == 1 and err[0].startswith(f"pneumo data {argv[1]}: error:") and any(w in err[0] for w in ("seed", "size", "fraction")), err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("images-*"))


def test_model_commands_keep_freed_memory_and_the_long_lived_service_is_not_among_them(tmp_path, monkeypatch, capsys) -> None:
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


def test_building_the_cli_imports_neither_torch_nor_scikit_learn() -> None:
    """Every command builds the whole parser first: `pneumo --help` or a one-line error must not wait for torch."""
    import subprocess
    import sys

    code = ("import sys; from pneumo.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'sklearn', 'timm', 'cv2') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("argv", "message"), [(["--folds", "1"], "--folds must be >= 2, got 1"),
                                               (["--threshold-policy", "magic"], "--threshold-policy"),
                                               (["--rehearsal", "-1"], "--rehearsal must be >= 0")])
def test_adapt_options_out_of_range_fail_with_one_line_naming_the_flag(argv: list[str], message: str, tmp_path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    assert main(["adapt", "--data", str(tmp_path), "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_dataset_path_is_text_not_yaml(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--dataset "xr #2"` became `data.root: xr` (a YAML comment) and trained on another folder; `@home/xr` was a
    YAML ScannerError traceback. An override that is no YAML value is one line."""
    for name in ("xr #2", "@home/xr", "Kermany: v2"):
        assert main(["train", "--preset", "lite0-probe", "--dataset", str(tmp_path / name), "--print-config"]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["data"]["root"] == str(tmp_path / name)
    assert main(["train", "--preset", "lite0-probe", "--set", "data.root=@x", "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a YAML value" in err[0]


def test_verbose_goes_before_or_after_the_command_and_adapt_takes_trains_devices(capsys: pytest.CaptureFixture,
                                                                                  tmp_path) -> None:
    """`pneumo evaluate -v` was "unrecognized arguments"; `adapt --device` offered auto/cpu/cuda only (a CLI review)."""
    from pneumo.cli import build_parser

    parser = build_parser()
    assert [parser.parse_args(argv).verbose for argv in (["model-card"], ["-v", "model-card"], ["model-card", "-v"],
                                                         ["data", "split", "-v"])] == [False, True, True, True]
    assert parser.parse_args(["adapt", "--data", "d", "--out", "o", "--device", "cuda:1"]).device == "cuda:1"
    assert main(["adapt", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device) must be auto, cpu, cuda, cuda:N or mps, got 'tpu'" in err[0], err


def test_no_help_shows_an_empty_default(capsys: pytest.CaptureFixture) -> None:
    """`serve --root-path` said "(default: )" (a CLI review)."""
    from pneumo.cli import SUBCOMMANDS

    for name in [*SUBCOMMANDS, "data split", "site check", "ood fit"]:
        with pytest.raises(SystemExit):
            main([*name.split(), "--help"])
        assert "(default: )" not in " ".join(capsys.readouterr().out.split()), name


def test_a_default_of_zero_is_shown_in_help(capsys: pytest.CaptureFixture) -> None:
    """`0 == False`: the help formatter took a default of 0 for "no default" and left it out (--seed)."""
    with pytest.raises(SystemExit):
        main(["data", "split", "--help"])
    assert re.search(r"--split-seed SPLIT_SEED\s+.*\(default: 0\)", " ".join(capsys.readouterr().out.split()))
