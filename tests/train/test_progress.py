"""The feature passes' progress bars (OOD statistics, orientation check: a dozen of them in `pneumo adapt`) belong on
a terminal: written to a log file or a pipe (nohup, CI, `2>&1 | tee`) they fill it with carriage-return lines. The
training bar stays, also in logs: it is how a user tailing one (and the kill-and-resume tests) sees the step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pneumo.models.registry import build
from pneumo.models.scratch import scratch_cnn  # noqa: F401 (registers the architecture)
from pneumo.train.probe import feature_extractor


def test_feature_bars_stay_out_of_stderr_that_is_no_terminal(capsys: pytest.CaptureFixture) -> None:
    extract = feature_extractor(build("scratch_cnn", num_classes=2), device=torch.device("cpu"), amp=False,
                                batch_size=2)
    features = extract(np.zeros((5, 64, 64), np.uint8), "ood features")
    assert features.shape[0] == 5
    assert "ood features" not in capsys.readouterr().err  # capsys' stderr is no TTY
