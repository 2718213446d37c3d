"""Checkpoints: safetensors weights + a typed JSON sidecar (CheckpointMeta), verified on load, without pickle."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from sidecars import edit_sidecar, signed

from pneumo.data.rundir import CROSSFIT_KEY
from pneumo.errors import IntegrityError, ModelError
from pneumo.models import PneumoNet, create
from pneumo.models.checkpoint import load_checkpoint, save_checkpoint
from pneumo.models.sidecar import DIGEST_KEY, LEGACY_FORMAT, CheckpointMeta, read_meta, sidecar_digest, write_meta


@pytest.fixture()
def scratch() -> PneumoNet:
    torch.manual_seed(0)
    return create("scratch_cnn", num_classes=2, weights="none").eval()


@pytest.fixture()
def saved(tmp_path: Path, scratch: PneumoNet) -> Path:
    save_checkpoint(tmp_path / "model", scratch, {"classes": ["NORMAL", "PNEUMONIA"], "threshold": 0.42})
    return tmp_path / "model"


@pytest.mark.parametrize("name", ["scratch_cnn", "test_resnet", "efficientnet_lite0"])
def test_checkpoint_round_trip_gives_identical_logits(tmp_path: Path, name: str) -> None:
    model = create(name, num_classes=3, weights="none" if name != "efficientnet_lite0" else "imagenet").eval()
    x = torch.rand(2, 1, 64, 64)
    save_checkpoint(tmp_path / "m", model, {})
    loaded, meta = load_checkpoint(tmp_path / "m.json")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert meta.arch == name and not loaded.training


@pytest.mark.parametrize("suffix", ["", ".json", ".safetensors"])
def test_load_accepts_the_sidecar_the_weights_or_the_stem(saved: Path, suffix: str) -> None:
    _, meta = load_checkpoint(str(saved) + suffix)
    assert meta.threshold == 0.42


def test_sidecar_records_format_checksum_and_the_callers_meta(saved: Path) -> None:
    meta = json.loads(saved.with_suffix(".json").read_text())
    assert meta["format"] == "pneumo-checkpoint/2" and meta[DIGEST_KEY] == sidecar_digest(meta)
    assert meta["sha256"] == hashlib.sha256(saved.with_suffix(".safetensors").read_bytes()).hexdigest()
    assert meta["classes"] == ["NORMAL", "PNEUMONIA"]
    assert {"arch", "num_classes", "input_size", "mean", "std", "created"} <= set(meta)


def test_callers_input_size_wins_and_comes_back_on_the_model(tmp_path: Path, scratch: PneumoNet) -> None:
    save_checkpoint(tmp_path / "m", scratch, {"input_size": 96})
    loaded, meta = load_checkpoint(tmp_path / "m")
    assert meta.input_size == 96 and loaded.input_size == 96


def test_sidecar_is_strict_json_even_with_nan_metrics(tmp_path: Path, scratch: PneumoNet) -> None:
    save_checkpoint(tmp_path / "m", scratch, {"metrics": {"auc": float("nan"), "f1": np.float32(0.5)}})
    text = (tmp_path / "m.json").read_text()
    meta = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert meta["metrics"] == {"auc": None, "f1": 0.5}


def test_half_export_is_about_half_the_size_and_loads_as_float32(tmp_path: Path, scratch: PneumoNet) -> None:
    save_checkpoint(tmp_path / "full", scratch, {})
    save_checkpoint(tmp_path / "half", scratch, {}, half=True)
    ratio = (tmp_path / "half.safetensors").stat().st_size / (tmp_path / "full.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    loaded, meta = load_checkpoint(tmp_path / "half")
    assert meta.dtype == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), scratch(x), atol=1e-2)


def test_corrupted_weights_are_a_model_error(saved: Path) -> None:
    weights = saved.with_suffix(".safetensors")
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_checkpoint(saved)


def test_truncated_weights_are_a_model_error(saved: Path) -> None:
    weights = saved.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match="truncated"):
        load_checkpoint(saved)


@pytest.mark.parametrize("flip", [False, True])
def test_weights_whose_checksum_was_deleted_are_never_loaded(saved: Path, flip: bool) -> None:
    edit_sidecar(saved.with_suffix(".json"), sha256=None)  # deleted, and the sidecar's own checksum re-recorded
    if flip:  # issue 24: without its checksum, a flipped weight byte was accepted
        weights = saved.with_suffix(".safetensors")
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0x01
        weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="no weights checksum"):
        load_checkpoint(saved)


def test_truncated_sidecar_is_a_model_error(saved: Path) -> None:
    sidecar = saved.with_suffix(".json")
    sidecar.write_text(sidecar.read_text()[:50])
    with pytest.raises(ModelError, match="not valid JSON"):
        load_checkpoint(saved)


def test_missing_files_are_a_model_error(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "elsewhere.json")
    saved.with_suffix(".safetensors").unlink()
    with pytest.raises(ModelError, match="weights missing"):
        load_checkpoint(saved)


def test_loading_neither_warns_nor_downloads(saved: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pneumo"):
        load_checkpoint(saved)
    assert not caplog.records


def test_saving_leaves_only_the_two_files(saved: Path) -> None:
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.json", "model.safetensors"]




def test_a_sidecar_from_before_the_typed_record_loads_with_the_old_defaults(saved: Path) -> None:
    sidecar = saved.with_suffix(".json")
    old = json.loads(sidecar.read_text())
    minimal = {k: old[k] for k in ("arch", "num_classes", "input_size", "mean", "std", "weights_file", "sha256")}
    sidecar.write_text(json.dumps({**minimal, "format": LEGACY_FORMAT}))  # the format of the time
    meta = read_meta(saved)
    assert (meta.threshold, meta.temperature, meta.resize_policy, meta.intensity, meta.tta) == (
        0.5, 1.0, "squash", "none", False)
    assert meta.classes == ["NORMAL", "PNEUMONIA"] and meta.threshold_policy is None
    load_checkpoint(saved)  # the weights still verify against the old sidecar


def test_unknown_sidecar_keys_survive_a_read_modify_write(saved: Path) -> None:
    sidecar = saved.with_suffix(".json")
    payload = json.loads(sidecar.read_text())
    payload["model_card"] = {"name": "card"}
    sidecar.write_text(json.dumps(signed(payload)))
    meta = read_meta(saved)
    write_meta(sidecar, dataclasses.replace(meta, threshold=0.3, threshold_policy="youden"))
    again = json.loads(sidecar.read_text())
    assert again["model_card"] == {"name": "card"} and again["threshold"] == 0.3
    assert again["threshold_policy"] == "youden" and again["sha256"] == payload["sha256"]


def test_meta_json_round_trip_is_lossless() -> None:
    meta = CheckpointMeta(arch="scratch_cnn", num_classes=3, input_size=64, task="3class",
                          classes=["normal", "bacteria", "virus"], threshold=0.7, tta=True,
                          metrics={"test": {"roc_auc": 0.9}}, extra={"note": "x"})
    assert CheckpointMeta.from_json(meta.to_json()) == meta


def test_the_task_gives_the_classes_when_a_sidecar_lacks_them() -> None:
    meta = CheckpointMeta.from_json({"arch": "scratch_cnn", "num_classes": 3, "task": "3class"})
    assert meta.classes == ["normal", "bacteria", "virus"]


@pytest.mark.parametrize("payload", [{"num_classes": 2}, {"arch": "scratch_cnn"}, {"arch": "a", "num_classes": "two"},
                                     ["not", "an", "object"]])
def test_a_sidecar_without_arch_or_with_bad_types_is_a_model_error(payload: object) -> None:
    with pytest.raises(ModelError):
        CheckpointMeta.from_json(payload)


def test_a_copy_of_the_shipped_models_folder_is_a_model_folder(tmp_path: Path) -> None:
    """`--model FOLDER` looked for model.json only: a copy of the shipped model's folder (default-model.json) was
    "model not found". A folder's one checkpoint is its model; with none or several, the error stays."""
    import shutil

    from pneumo.errors import ModelError
    from pneumo.models.sidecar import DEFAULT_MODEL, resolve_model

    copy = tmp_path / "deployed"
    shutil.copytree(DEFAULT_MODEL.parent, copy)
    assert resolve_model(copy) == copy / DEFAULT_MODEL.name
    shutil.copyfile(copy / DEFAULT_MODEL.name, copy / "other.json")
    shutil.copyfile(copy / DEFAULT_MODEL.with_suffix(".safetensors").name, copy / "other.safetensors")
    with pytest.raises(ModelError, match="holds 2 models"):  # (was "model not found": which one, not whether)
        resolve_model(copy)


@pytest.mark.parametrize("change", ["edit", "flip", "delete", "format"])
def test_a_sidecar_changed_after_it_was_written_is_refused(saved: Path, change: str) -> None:
    """Issue 24: the sidecar itself is covered by a recorded SHA-256. A threshold edited within range, one flipped bit
    of it, the record deleted: refused before any weights are read; the format flipped: not a sidecar."""
    sidecar = saved.with_suffix(".json")
    text = sidecar.read_text()
    if change == "edit":  # a value a range check cannot catch
        payload = json.loads(text)
        sidecar.write_text(json.dumps({**payload, "threshold": 0.41}))
    elif change == "flip":  # 0.42 -> 0.22: two bits of one byte
        data = bytearray(text.encode())
        data[text.index('"threshold": 0.42') + len('"threshold": 0.')] ^= 0x06
        sidecar.write_bytes(bytes(data))
        assert json.loads(sidecar.read_text())["threshold"] == 0.22
    elif change == "delete":
        payload = json.loads(text)
        del payload[DIGEST_KEY]
        sidecar.write_text(json.dumps(payload))
    else:
        sidecar.write_text(text.replace("pneumo-checkpoint/2", "pneumo-checkpoint/3"))
    error = ModelError if change == "format" else IntegrityError
    with pytest.raises(error, match="format|changed after pneumo wrote it") as info:
        load_checkpoint(saved)
    assert "\n" not in str(info.value)


def test_an_older_sidecar_without_its_own_checksum_loads_with_one_warning(
        saved: Path, caplog: pytest.LogCaptureFixture) -> None:
    sidecar = saved.with_suffix(".json")
    payload = json.loads(sidecar.read_text())
    del payload[DIGEST_KEY]
    sidecar.write_text(json.dumps({**payload, "format": LEGACY_FORMAT}))
    with caplog.at_level(logging.WARNING, logger="pneumo"):
        assert load_checkpoint(saved)[1].threshold == 0.42
        load_checkpoint(saved)
    assert len([r for r in caplog.records if "older pneumo" in r.getMessage()]) == 1
    write_meta(sidecar, read_meta(sidecar))  # rewritten: this format, protected
    assert json.loads(sidecar.read_text())["format"] == "pneumo-checkpoint/2"
    sidecar.write_text(sidecar.read_text().replace('"threshold": 0.42', '"threshold": 0.43'))
    with pytest.raises(IntegrityError):
        read_meta(sidecar)


def test_the_shipped_model_records_its_sidecars_checksum() -> None:
    from pneumo.models.sidecar import DEFAULT_MODEL

    payload = json.loads(DEFAULT_MODEL.read_text())
    assert payload["format"] == "pneumo-checkpoint/2" and payload[DIGEST_KEY] == sidecar_digest(payload)


@pytest.mark.parametrize("trick", ["nan-empty", "downgrade-keeping-record", "downgrade-of-an-adapted-model"])
def test_a_sidecar_cannot_switch_its_own_check_off(saved: Path, trick: str) -> None:
    """Review of the record: a NaN anywhere made the digest empty, so an empty record passed; a format set back to
    /1 while a record of /2 stays in it is an edited file, not an older one."""
    sidecar = saved.with_suffix(".json")
    payload = json.loads(sidecar.read_text())
    payload["threshold"] = 0.01  # the edit the trick hides
    if trick == "nan-empty":
        payload["metrics"] = {"test": {"roc_auc": float("nan")}}
        payload[DIGEST_KEY] = ""
    else:
        payload["format"] = LEGACY_FORMAT
    if trick == "downgrade-of-an-adapted-model":  # its own record removed; the adapted-on list's record, which only
        payload.pop(DIGEST_KEY)  # this format's writers made, stays (a review: every command ran, the card forged)
        payload[CROSSFIT_KEY] = "0" * 64
    sidecar.write_text(json.dumps(payload))
    with pytest.raises(IntegrityError, match="changed after pneumo wrote it"):
        read_meta(sidecar)


def test_rewriting_an_older_sidecar_records_the_card_beside_it(saved: Path) -> None:
    """`pneumo ood fit --model` on a model of the older format (an adapted model with its card): the card, never shown
    while unrecorded, is its card once recorded."""
    from pneumo.infer.card import card_markdown
    from pneumo.models.sidecar import CARD_KEY

    sidecar = saved.with_suffix(".json")
    payload = {k: v for k, v in json.loads(sidecar.read_text()).items() if k != DIGEST_KEY}
    sidecar.write_text(json.dumps({**payload, "format": LEGACY_FORMAT}))
    sidecar.with_suffix(".md").write_text("# Model card: site A\n")
    assert card_markdown(sidecar) is None
    write_meta(sidecar, read_meta(sidecar))
    assert json.loads(sidecar.read_text())[CARD_KEY] == hashlib.sha256(b"# Model card: site A\n").hexdigest()
    assert card_markdown(sidecar) == "# Model card: site A\n"


@pytest.mark.parametrize("card", ["link", "huge"])
def test_an_older_sidecars_card_linked_elsewhere_or_huge_is_never_read_nor_recorded(saved: Path, tmp_path: Path,
                                                                                    card: str) -> None:
    """A red-team review: a model folder whose sidecar claimed the older format (no records) and whose card was a link
    to a secret file (or /proc/self/environ) had the secret served as the card by `GET /api/v1/model`."""
    from pneumo.infer.card import card_markdown, model_card_text
    from pneumo.models.sidecar import CARD_KEY

    sidecar = saved.with_suffix(".json")
    payload = {k: v for k, v in json.loads(sidecar.read_text()).items() if k != DIGEST_KEY}
    sidecar.write_text(json.dumps({**payload, "format": LEGACY_FORMAT}))
    secret = tmp_path / "secret.txt"
    secret.write_text("db_password=hunter2\n")
    if card == "link":
        sidecar.with_suffix(".md").symlink_to(secret)
    else:
        sidecar.with_suffix(".md").write_text("db_password=hunter2\n" + "x" * (1 << 20))
    assert card_markdown(sidecar) is None and "hunter2" not in model_card_text(sidecar)
    write_meta(sidecar, read_meta(sidecar))  # the rewrite (`pneumo ood fit`) does not record it either
    assert CARD_KEY not in json.loads(sidecar.read_text()) and "hunter2" not in model_card_text(sidecar)


def test_an_older_adapted_models_card_is_built_from_its_adaptation_record_not_the_generic_one(saved: Path) -> None:
    """An adapted model of the older format records no card: the generic card was shown (pediatric intended use, "Not
    measured yet"), without the cross-fitted figures or the do-not-deploy warning its log line pointed to (an upgrade
    review)."""
    from pneumo.infer.card import card_of

    sidecar = saved.with_suffix(".json")
    payload = {k: v for k, v in json.loads(sidecar.read_text()).items() if k != DIGEST_KEY}
    point = {"threshold": 0.42, "sensitivity": 0.95, "specificity": 0.1, "specificity_exact_ci": [0.012, 0.317]}
    payload.update(format=LEGACY_FORMAT, threshold=0.42, threshold_policy="sensitivity:0.95", mode="adapted",
                   metrics={"site_crossfit": {"roc_auc": 0.557, "sensitivity": 0.95, "specificity": 0.1},
                            "site_crossfit_n": 40},
                   adaptation={"site": {"n_images": 40, "n_patients": 40, "data": "site"},
                               "operating_points": {"sensitivity:0.95": point}})
    sidecar.write_text(json.dumps(payload))
    card = card_of(sidecar)
    assert card.startswith("# Adapted model:") and "40 images of 40 patients of site" in card
    assert "| roc-auc | 0.557 |" in card and "Not measured yet" not in card and "pediatric" not in card
    assert "**Warning**: at this operating point about 9 in 10 normal films would be called pneumonia" in card
    assert "do not deploy it at this operating point" in card
    payload["threshold"] = 0.9  # a later operating point (operating-point --data): the adaptation's warning is not its
    sidecar.write_text(json.dumps(payload))
    card = card_of(sidecar)
    assert "**Warning**" not in card and "at the adaptation's operating point, not this model's" in card
