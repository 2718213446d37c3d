"""`pneumo compare --select`: runs grouped into configurations by config (seeds apart), the validation-only rule
applied step by step, a difference inside the seed spread deciding nothing, and no test number read."""

from __future__ import annotations

from pathlib import Path

import evaluated_runs
import pytest

from pneumo.cli import main
from pneumo.errors import DataError
from pneumo.evaluate.compare import load_run_metrics
from pneumo.evaluate.select import config_key, group_runs, select


def make_run(root: Path, name: str, *, seed: int, separation: float, test_separation: float = 1.0,
             config: dict | None = None) -> Path:
    cfg = {"name": name, "out_dir": str(root), "data": {"split_seed": seed, "markers": "inpaint"},
           "model": {"name": "efficientnet_lite0", "mode": "partial"}, "train": {"seed": seed, "epochs": 6},
           "eval": {"threshold_policy": "sensitivity:0.95"}}
    for section, values in (config or {}).items():
        cfg.setdefault(section, {}).update(values)
    return evaluated_runs.make_run(root, name, seed=seed, separation=separation, test_separation=test_separation,
                                   config=cfg, training={"wall_time_s": 600.0 + seed})[0]


def runs(root: Path, label: str, separations: list[float], lr: float = 1e-3, **kwargs: object) -> list[dict]:
    """Seeds 0, 1, ... of one configuration (``lr`` tells configurations apart)."""
    config = {"train": {"lr": lr}, **kwargs.pop("config", {})}  # type: ignore[dict-item]
    return [load_run_metrics(make_run(root, f"{label}-s{i}", seed=i, separation=s, config=config,  # type: ignore[arg-type]
                                      **kwargs)) for i, s in enumerate(separations)]


def test_seeds_of_one_config_form_one_configuration_and_other_settings_another(tmp_path: Path) -> None:
    a = runs(tmp_path, "partial", [3.0, 3.1, 3.2])
    b = runs(tmp_path, "partial-320", [3.0, 3.1], config={"data": {"image_size": 320}})
    assert len(group_runs(runs(tmp_path / "z", "x", [1.0]) + runs(tmp_path / "z", "y", [2.0]))) == 1  # names alone
    groups = group_runs([a[0], b[0], a[1], b[1], a[2]])
    assert [(g.label, len(g.runs)) for g in groups] == [("partial", 3), ("partial-320", 2)]


def test_the_threshold_policy_and_removed_keys_do_not_split_a_configuration(tmp_path: Path) -> None:
    new = load_run_metrics(make_run(tmp_path, "new", seed=0, separation=3.0))
    old = load_run_metrics(make_run(tmp_path, "old", seed=1, separation=3.0, config={
        "train": {"num_workers": 0, "probe_c": 1.0}, "eval": {"threshold_policy": "youden"}}))
    assert config_key(new) == config_key(old)
    other = load_run_metrics(make_run(tmp_path, "other", seed=2, separation=3.0, config={"train": {"mixup": 0.2}}))
    assert config_key(other) != config_key(new)  # a removed study option, set: another configuration
    plain = load_run_metrics(make_run(tmp_path, "plain", seed=3, separation=3.0, config={
        "train": {"mixup": 0.0, "ema": 0.0, "teachers": []}, "data": {"train_sources": "all"}}))
    assert config_key(plain) == config_key(new)  # at their old defaults they are what the product does


def test_a_config_from_before_the_fp32_depthwise_path_is_kept_apart_from_runs_on_it(tmp_path: Path) -> None:
    before = load_run_metrics(make_run(tmp_path, "before", seed=0, separation=3.0))  # no train.depthwise_fp32 key
    off = load_run_metrics(make_run(tmp_path, "off", seed=1, separation=3.0, config={
        "train": {"depthwise_fp32": False, "hold_memory": False}}))
    on = load_run_metrics(make_run(tmp_path, "on", seed=2, separation=3.0, config={
        "train": {"depthwise_fp32": True, "hold_memory": True}}))
    assert config_key(before) == config_key(off) != config_key(on)  # other arithmetic; memory handling is not config


def test_a_clearly_lower_val_log_loss_decides_at_the_first_step(tmp_path: Path) -> None:
    good = runs(tmp_path, "good", [4.0, 4.1, 3.9])
    weak = runs(tmp_path, "weak", [1.0, 1.1, 0.9], lr=1e-4)
    result = select(group_runs(good + weak))
    assert result.pick is not None and result.pick.label == "good"
    assert result.log[0].startswith("val log-loss") and result.log[-1] == "pick: good"


def test_a_difference_inside_the_seed_spread_decides_nothing(tmp_path: Path) -> None:
    a = runs(tmp_path, "a", [2.0, 3.5, 2.6])
    b = runs(tmp_path, "b", [2.7, 2.4, 3.0], lr=1e-4)
    result = select(group_runs(a + b))
    assert result.pick is None and {c.label for c in result.remaining} == {"a", "b"}
    assert "undecided" in result.log[-1] and len(result.log) == 3  # both steps ran, neither decided


def test_test_numbers_never_move_the_pick(tmp_path: Path) -> None:
    good = runs(tmp_path / "x", "good", [4.0, 4.1, 3.9], test_separation=0.2)
    weak = runs(tmp_path / "x", "weak", [1.0, 1.1, 0.9], lr=1e-4, test_separation=5.0)
    assert select(group_runs(good + weak)).pick.label == "good"  # type: ignore[union-attr]


def test_configurations_with_too_few_seeds_are_not_eligible(tmp_path: Path) -> None:
    lone = runs(tmp_path, "lone", [6.0])
    three = runs(tmp_path, "three", [1.0, 1.1, 0.9], lr=1e-4)
    result = select(group_runs(lone + three))
    assert result.pick.label == "three" and [c.label for c in result.excluded] == ["lone"]  # type: ignore[union-attr]
    # none eligible: listed with the reason, no pick (it was an error, and no selection.md was written)
    alone = select(group_runs(lone))
    assert alone.pick is None and alone.remaining == [] and [c.label for c in alone.excluded] == ["lone"]
    assert alone.log[-1] == "no configuration has 3 or more seeds: nothing to select (train more seeds)"
    with pytest.raises(DataError, match="unknown rule step 'test_auc'"):
        select(group_runs(three), rule=["test_auc"])


def test_a_run_without_the_rules_measure_is_a_data_error(tmp_path: Path) -> None:
    rs = runs(tmp_path, "r", [2.0, 2.1, 2.2]) + runs(tmp_path, "q", [1.0, 1.1, 1.2], lr=1e-4)
    del rs[1]["val"]["nll_before"]
    with pytest.raises(DataError, match=r"r-s1: metrics\.json has no val\.nll_before"):
        select(group_runs(rs))


def test_cli_compare_select_writes_selection_md(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirs = [make_run(tmp_path, f"good-s{i}", seed=i, separation=4.0 + i / 10) for i in range(3)]
    dirs += [make_run(tmp_path, f"weak-s{i}", seed=i, separation=1.0 + i / 10, config={"train": {"epochs": 2}})
             for i in range(3)]
    assert main(["compare", *map(str, dirs), "--select", "--out", str(tmp_path / "board")]) == 0
    text = (tmp_path / "board" / "selection.md").read_text(encoding="utf-8")
    assert "- pick: good" in text and "| good | 3 |" in text and "| weak | 3 |" in text
    assert "selection:" in capsys.readouterr().out
    assert main(["compare", *map(str, dirs), "--select", "--rule", "val_nll,test_auc", "--out",
                 str(tmp_path / "b2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rule: unknown step 'test_auc'" in err[0]
    assert not (tmp_path / "b2").exists()  # refused before the leaderboard was written
    assert main(["compare", *map(str, dirs), "--min-seeds", "2", "--out", str(tmp_path / "b5")]) == 2  # no --select:
    assert "add --select" in capsys.readouterr().err and not (tmp_path / "b5").exists()  # it was silently ignored
    assert main(["compare", *map(str, dirs), "--select", "--min-seeds", "0", "--out", str(tmp_path / "b3")]) == 2
    assert "--min-seeds must be at least 1, got 0" in capsys.readouterr().err and not (tmp_path / "b3").exists()
    # too few seeds everywhere: listed as not eligible in selection.md, as --help says (it was an error)
    assert main(["compare", *map(str, dirs), "--select", "--min-seeds", "4", "--out", str(tmp_path / "b4")]) == 0
    text = (tmp_path / "b4" / "selection.md").read_text(encoding="utf-8")
    assert "good: 3 seed(s) < 4, not eligible" in text and "nothing to select (train more seeds)" in text


def test_a_derived_operating_point_or_a_copy_of_a_run_is_no_extra_seed(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """`pneumo operating-point --out runs/...` writes the same weights at another threshold into the runs folder: it
    counted as a third seed of a two-seed configuration, made it eligible, shrank its SD, and the rule picked it."""
    import json
    import shutil

    dirs = [make_run(tmp_path, f"two-s{i}", seed=i, separation=4.0 + i / 10) for i in range(2)]
    dirs += [make_run(tmp_path, f"three-s{i}", seed=i, separation=1.0 + i / 10, config={"train": {"epochs": 2}})
             for i in range(3)]
    for i, d in enumerate(dirs):
        (d / "model.json").write_text(json.dumps({"sha256": f"{i:064x}"}))
    derived = tmp_path / "two-s0-triage"
    shutil.copytree(dirs[0], derived)
    meta = json.loads((derived / "model.json").read_text())
    (derived / "model.json").write_text(json.dumps({**meta, "operating_point": {"derived_from": {"model": "x"}}}))
    copy = tmp_path / "two-s1-copy"
    shutil.copytree(dirs[1], copy)
    assert main(["compare", *map(str, [*dirs, derived, copy]), "--select", "--out", str(tmp_path / "board")]) == 0
    text = (tmp_path / "board" / "selection.md").read_text(encoding="utf-8")
    assert "| two | 2 |" in text and "- pick: three" in text  # two is not eligible with its 2 real seeds
    assert "is a new operating point of another run" in caplog.text and "holds the same weights" in caplog.text


@pytest.mark.parametrize("same_folds", [True, False])
def test_configurations_measured_on_other_val_folds_are_warned_about(same_folds: bool, tmp_path: Path) -> None:
    """Three seeds at split seed 0 against three at split seed 1: ranked on val numbers of different images, with
    no word of it."""
    import json

    dirs = []
    for label, epochs, sep in (("a", 6, 4.0), ("b", 2, 1.0)):
        for i in range(3):
            d = make_run(tmp_path, f"{label}-s{i}", seed=i, separation=sep + i / 10, config={"train": {"epochs": epochs}})
            fold = "shared" if same_folds else label
            (d / "model.json").write_text(json.dumps({"sha256": f"{label}{i}".ljust(64, "0"),
                                                      "operating_point": {"chosen_on": {"paths_sha256": fold}}}))
            dirs.append(d)
    assert main(["compare", *map(str, dirs), "--select", "--out", str(tmp_path / "board")]) == 0
    text = (tmp_path / "board" / "selection.md").read_text(encoding="utf-8")
    assert ("measured on different val folds" in text) is (not same_folds)


def test_one_set_of_weights_written_with_two_headers_is_one_seed(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """An older pneumo wrote one model's metadata in a per-process order: two file SHA-256s for the same tensors, and
    the selection counted them as two seeds (upgrade review)."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    from pneumo import atomic
    from pneumo.models import tensorfile

    dirs = [make_run(tmp_path, f"same-s{i}", seed=0, separation=4.0) for i in range(2)]
    tensors = {"head.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    for i, d in enumerate(dirs):
        save_file(tensors, str(d / "model.safetensors"), metadata={"written": f"process {i}"})
        (d / "model.json").write_text(json.dumps({"sha256": atomic.sha256_file(d / "model.safetensors")}))
    assert atomic.sha256_file(dirs[0] / "model.safetensors") != atomic.sha256_file(dirs[1] / "model.safetensors")
    digests = {tensorfile.tensors_sha256(d / "model.safetensors") for d in dirs}
    assert len(digests) == 1
    main(["compare", *map(str, dirs), "--select", "--min-seeds", "2", "--out", str(tmp_path / "board")])
    assert "holds the same weights as a run before it" in caplog.text


def test_runs_of_two_tasks_are_not_selected_on_one_log_loss(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A binary run was picked over a 3-class run of the same val AUC on val log-loss, which is on another scale for
    three classes (chance 1.10 against 0.69; a training audit)."""
    import json

    binary = runs(tmp_path, "binary", [3.0, 3.1, 3.2])
    three = runs(tmp_path, "three", [3.0, 3.1, 3.2], lr=3e-4)
    for run in three:  # the task a 3-class evaluation records
        path = Path(run["_run_dir"]) / "metrics.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "task": "3class"}))
    three = [load_run_metrics(Path(run["_run_dir"])) for run in three]
    with pytest.raises(DataError, match="the runs hold 3class and binary models: their val log-loss is not on one scale"):
        select(group_runs(binary + three))
    dirs = [run["_run_dir"] for run in binary + three]  # and through the command: one line, exit 2
    assert main(["compare", *map(str, dirs), "--select", "--out", str(tmp_path / "board")]) == 2
    assert "val log-loss is not on one scale" in capsys.readouterr().err
    assert select(group_runs(binary)).pick is not None or select(group_runs(binary)).remaining
