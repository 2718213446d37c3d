"""The CLI's error contract from the configuration review: every bad value is one stderr line naming the flag, exit 2,
before any work (they were tracebacks, usage blocks, or values accepted and failing later)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumo.cli import main
from pneumo.errors import ConfigError


def _code(argv: list[str]) -> int:
    """``main``'s exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def _one_line(capsys: pytest.CaptureFixture, *words: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert all(word in err[0] for word in words), err[0]
    return err[0]


@pytest.mark.parametrize(("text", "words"), [
    ("train:\n\tepochs: 2\n", ("not a readable YAML file",)),  # a tab indent
    ("train: {epochs: 2\n", ("not a readable YAML file",)),
    ("!!python/object/apply:os.system [\"true\"]\n", ("not a readable YAML file",)),  # never run, and one line
    ("- a\n- b\n", ("needs a mapping",)),
    ("train:\n  epochs: 2\ntrain:\n  lr: 0.1\n", ("key 'train' given twice",)),  # the last one silently won
])
def test_a_preset_file_that_is_not_a_yaml_mapping_is_one_line(text: str, words: tuple[str, ...], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    preset = tmp_path / "bad.yaml"
    preset.write_text(text)
    assert main(["train", "--print-config", "--preset", str(preset)]) == 2
    _one_line(capsys, str(preset), *words)


def test_a_runs_broken_config_yaml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes(b"\xff\xfe not text")
    (run / "folds.csv").write_text("path,fold\n")
    assert main(["evaluate", "--model", str(run)]) == 2
    _one_line(capsys, "config.yaml", "not a readable YAML file")


@pytest.mark.parametrize(("argv", "words"), [
    (["train", "--print-config", "--preset", "scratch-cnn", "--seed", "4294967296"], ("--seed", "4294967295")),
    (["train", "--print-config", "--preset", "scratch-cnn", "--seed", "3", "--set", "train.seed=4"],
     ("--seed and --set train.seed", "give one")),
    (["train", "--print-config", "--preset", "scratch-cnn", "--set", "train.augment.scale=1.5"], ("scale", "< 1")),
    (["train", "--print-config", "--preset", "scratch-cnn", "--seed", "1e3"], ("pneumo train: error:", "--seed")),
    (["adapt", "--data", "x", "--out", "y", "--folds", "2.5"], ("pneumo adapt: error:", "--folds")),
    (["evaluate", "--seed", "1"], ("pneumo evaluate: error: unrecognized arguments: --seed 1",)),
    (["train", "--print-config", "--preset", "scratch-cnn", "--set", "train={epochs: 2}"], ("one key at a time",)),
    (["serve", "--host", "bad..host", "--model", "/nonexistent"], ("--host bad..host",)),
    (["site", "check", "--data", "x", "--out", "y", "--seed", "-1"], ("--seed", "0..4294967295")),
    (["ood", "fit", "--model", "default", "--percentile", "150"], ("--percentile", "[50, 100)")),
    (["data", "split", "--val-fraction", "0.7"], ("val fraction", "(0, 0.5)")),
    (["evaluate", "--threshold-policy", "sensitivty:0.9"], ("pneumo evaluate: error: --threshold-policy",)),
    (["train", "--print-config", "--preset", "../configs/default"], ("a preset is a shipped preset's name",)),
    (["train", "--print-config", "--preset", "scratch-cnn", "--set", "train.warmup_epochs=1e9"],
     ("train.warmup_epochs must be below train.epochs",)),
])
def test_bad_values_are_one_line_naming_the_flag_before_any_work(argv: list[str], words: tuple[str, ...],
                                                                 full_data: Path, capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNEUMO_DATA", str(full_data))
    assert _code(argv) == 2
    _one_line(capsys, *words)


def test_an_ensemble_listing_a_member_twice_is_refused() -> None:
    from pneumo.config import load_config
    from pneumo.train.run import member_configs

    with pytest.raises(ConfigError, match="lists a member twice"):
        member_configs(load_config("scratch-cnn", ["members=lite0-probe,lite0-probe"]), [])


def test_a_run_trained_on_a_gpu_is_scored_where_it_is_evaluated() -> None:
    """A run whose config says cuda was evaluated on cuda: on a machine without a GPU that was a traceback."""
    import torch

    from pneumo.models.runtime import select_device

    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("cuda", here=True).type == here and select_device("cpu", here=True).type == "cpu"
    assert select_device("mps", here=True).type in ("mps", here)


def test_the_data_commands_and_the_model_list_run_through_the_cli(data_slice: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """Command paths that only their library functions tested (done-when review): data scan and data cache as a user
    runs them, and train --list-models."""
    import pandas as pd

    manifest = tmp_path / "manifest.csv"
    assert main(["data", "scan", "--dataset", str(data_slice), "--output", str(manifest)]) == 0
    scanned = pd.read_csv(manifest, keep_default_na=False)
    assert len(scanned) == len(list(data_slice.rglob("*.jpeg"))) and f"({len(scanned)} images)" in capsys.readouterr().out
    assert main(["data", "cache", "--dataset", str(data_slice), "--size", "32", "--cache-dir", str(tmp_path / "c")]) == 0
    assert f"({len(scanned)}, 32, 32)" in capsys.readouterr().out and any((tmp_path / "c").glob("images-32-*.npy"))
    assert main(["train", "--list-models"]) == 0
    listed = capsys.readouterr().out
    assert "efficientnet_lite0" in listed and "scratch_cnn" in listed
    # and the presets, each one that --preset loads (a training audit: only an unknown name listed them)
    from pneumo.config import load_config

    presets = next(line for line in listed.splitlines() if line.startswith("presets (--preset): "))
    names = presets.split(": ", 1)[1].split(", ")
    assert "default" in names and "lite0-probe" in names and all(load_config(name) for name in names)


def test_a_library_adaptation_setting_without_a_flag_is_named_as_the_caller_set_it() -> None:
    """AdaptConfig's errors named `--lr`, `--batch-size`: flags `pneumo adapt` does not have."""
    from pneumo.config import AdaptConfig

    with pytest.raises(ConfigError, match=r"^AdaptConfig\.lr must be <= 1, got 5"):
        AdaptConfig(lr=5)
    with pytest.raises(ConfigError, match=r"^--folds must be >= 2, got 1"):
        AdaptConfig(folds=1)


def test_the_service_config_checks_its_cors_origins_for_library_callers_too() -> None:
    """Only `pneumo serve` checked the origins: `ServeConfig(cors_origins=["http://x/"])` was accepted, an origin no
    browser ever sends (configuration review)."""
    from pneumo.config import ServeConfig

    with pytest.raises(ConfigError, match=r"^--cors-origin 'http://x/' is not an origin"):
        ServeConfig(cors_origins=["http://x/"])
    assert ServeConfig(cors_origins=["https://pacs.example.org", "*"]).cors_origins == ["https://pacs.example.org", "*"]


@pytest.mark.parametrize(("argv", "said"), [
    (["train", "--model", "scratch_cnn"], "(renamed: --model is --arch now)"),
    (["predict", "x.jpeg", "--out", "p.csv"], "(renamed: --out is --output now)"),
    (["evaluate", "runs/old"], "(renamed: a model is given with --model)"),
    (["evaluate", "--val", "v", "--out-dir=o"], "(renamed: --val is --data now; --out-dir is --out now)"),
    (["serve", "--val", "v"], None),  # serve has no --data: no hint that would send the script elsewhere
])
def test_an_older_versions_spelling_is_named_with_todays(argv: list[str], said: str | None,
                                                         capsys: pytest.CaptureFixture) -> None:
    """Scripts written for an older pneumo got a bare "unrecognized arguments" (an upgrade review)."""
    assert _code(argv) == 2
    line = _one_line(capsys, "error: unrecognized arguments")
    assert (said in line) if said else "renamed" not in line
