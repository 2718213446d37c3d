"""Crash safety of `pneumo train`: a run killed mid-epoch (SIGKILL) or interrupted (SIGINT) and then resumed ends
exactly where an uninterrupted run with the same seed ends; a damaged state fails with one line."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from in_process import run_in_process

from pneumo.cli import main
from pneumo.config import TrainConfig

EPOCHS, STEPS_PER_EPOCH = 3, 9  # 36 training images of the slice at batch 4
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
has_step_checkpoints = pytest.mark.skipif(
    "checkpoint_every_steps" not in TrainConfig.model_fields,
    reason="needs the config field train.checkpoint_every_steps")


def train_command(data: Path, work: Path, name: str, *extra: str) -> list[str]:
    """A scratch CNN at 64 px, 3 epochs of 9 steps, on the CPU with one thread (deterministic)."""
    options = ["data.image_size=64", f"data.cache_dir={work / 'cache'}", "data.val_fraction=0.3",
               f"train.epochs={EPOCHS}", "train.batch_size=4", "train.amp=false", *extra]
    return [sys.executable, "-m", "pneumo", "train", "--preset", "scratch-cnn", "--dataset", str(data), "--out",
            str(work / "runs"), "--name", name, "--device", "cpu", "--seed", "0", "--no-eval",
            *[arg for option in options for arg in ("--set", option)]]


def saved_counters(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "last.json").read_text())["extra"]
    except (OSError, ValueError, KeyError):
        return None


def mid_epoch_after(counters: dict | None, global_step: int) -> bool:
    return bool(counters) and counters["global_step"] > global_step and counters["step"] > 0


def freeze_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 180) -> None:
    """Poll until ``ready()``, then SIGSTOP the process and check again (it may have moved on meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "training finished before the test could interrupt it"
        if ready():
            proc.send_signal(signal.SIGSTOP)
            if ready():
                return
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    proc.kill()
    pytest.fail("training never reached the point to interrupt")


def assert_same_training(run_dir: Path, reference: pd.DataFrame) -> None:
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["epoch"].tolist() == list(range(1, EPOCHS + 1))  # no row twice after the resume
    assert metrics["global_step"].tolist() == reference["global_step"].tolist()
    for column in ("train_loss", "val_loss", "val_auc"):
        assert metrics[column].to_numpy() == pytest.approx(reference[column].to_numpy(), abs=1e-4), column
    assert saved_counters(run_dir)["global_step"] == EPOCHS * STEPS_PER_EPOCH


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crash")


@pytest.fixture(scope="module")
def reference(data_slice: Path, work: Path) -> pd.DataFrame:
    """metrics.csv of the same training, never interrupted."""
    run_in_process(train_command(data_slice, work, "reference"))
    return pd.read_csv(work / "runs" / "reference" / "metrics.csv")


@pytest.mark.slow
@has_step_checkpoints
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(data_slice: Path, work: Path,
                                                                    reference: pd.DataFrame,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    run_dir, log = work / "runs" / "killed", work / "killed.log"
    command = train_command(data_slice, work, "killed", "train.checkpoint_every_steps=2")
    with open(log, "w") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=ENV)
    try:
        freeze_when(proc, lambda: mid_epoch_after(saved_counters(run_dir), STEPS_PER_EPOCH + 2))
    finally:
        proc.kill()
        proc.wait()
    killed_at = saved_counters(run_dir)
    assert killed_at["global_step"] < EPOCHS * STEPS_PER_EPOCH and killed_at["step"] > 0  # mid-epoch, unfinished

    caplog.set_level(logging.INFO, logger="pneumo")
    run_in_process([*command, "--resume"])

    assert f"resuming at epoch {killed_at['epoch'] + 1}, step {killed_at['step']}" in caplog.text
    assert_same_training(run_dir, reference)


@pytest.mark.slow
def test_ctrl_c_saves_a_resumable_state_and_exits_130(data_slice: Path, work: Path, reference: pd.DataFrame) -> None:
    run_dir, log = work / "runs" / "ctrl-c", work / "ctrl-c.log"
    command = train_command(data_slice, work, "ctrl-c")
    with open(log, "w") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=ENV)
    in_second_epoch = re.compile(rf"epoch 2/{EPOCHS}:\s+\d+%\|[^|]*\|\s+[1-8]/{STEPS_PER_EPOCH}")
    try:
        freeze_when(proc, lambda: bool(in_second_epoch.search(log.read_text(errors="replace"))))
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()
        proc.wait()
    output = log.read_text()
    assert "interrupted" in output and "--resume --name ctrl-c" in output
    stopped_at = saved_counters(run_dir)
    assert STEPS_PER_EPOCH < stopped_at["global_step"] < EPOCHS * STEPS_PER_EPOCH  # saved on Ctrl-C, in epoch 2

    run_in_process([*command, "--resume"])

    assert_same_training(run_dir, reference)


@pytest.fixture()
def one_thread() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cli_options(data: Path, tmp_path: Path, name: str, epochs: int) -> list[str]:
    command = train_command(data, tmp_path, name, f"train.epochs={epochs}")
    return command[command.index("train"):]


def test_a_state_torn_by_a_crash_resumes_from_the_previous_one(data_slice: Path, tmp_path: Path, one_thread: None,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pneumo")
    assert main(cli_options(data_slice, tmp_path, "torn", 2)) == 0
    run_dir = tmp_path / "runs" / "torn"
    first = pd.read_csv(run_dir / "metrics.csv")
    # a crash between replacing last.safetensors and last.json: the weights no longer match the sidecar's checksum
    (run_dir / "last.safetensors").write_bytes((run_dir / "last-prev.safetensors").read_bytes())

    assert main([*cli_options(data_slice, tmp_path, "torn", 2), "--resume"]) == 0

    assert "resuming from the state before it" in caplog.text and "resuming at epoch 2, step 0" in caplog.text
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]  # epoch 2, logged before the "crash", was redone and logged once
    assert metrics["global_step"].tolist() == [9, 18]
    assert metrics["val_loss"].to_numpy() == pytest.approx(first["val_loss"].to_numpy(), abs=1e-4)


def test_a_truncated_state_without_a_previous_one_fails_the_resume_with_one_line(
        data_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(cli_options(data_slice, tmp_path, "truncated", 1)) == 0
    run_dir = tmp_path / "runs" / "truncated"
    assert not (run_dir / "last-prev.json").exists()
    with open(run_dir / "last.safetensors", "r+b") as fh:
        fh.truncate(1000)
    capsys.readouterr()

    assert main([*cli_options(data_slice, tmp_path, "truncated", 2), "--resume"]) == 2

    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("pneumo train: error: cannot resume") and "truncated" in error
    assert pd.read_csv(run_dir / "metrics.csv")["epoch"].tolist() == [1]
