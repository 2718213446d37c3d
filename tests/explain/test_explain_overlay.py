"""HeatmapWriter: safe names inside the output folder, overlay PNG + raw map in the original geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.errors import ConfigError
from pneumo.explain.overlay import HeatmapWriter, heatmap_name, safe_stem, write_contact_sheet
from pneumo.explain.render import blend, colorize
from pneumo.infer.predictor import Predictor


@pytest.mark.parametrize(("name", "expected"), [
    ("scans/person1_virus_6.jpeg", "person1_virus_6"),
    ("../../etc/passwd", "passwd"),
    ("a b$c (1).png", "a_b_c_1"),
    (".hidden.png", "hidden"),
    ("C:\\Users\\x\\chest.dcm", "chest"),
    ("..", "image"),
    ("", "image"),
])
def test_safe_stem_keeps_only_harmless_characters(name: str, expected: str) -> None:
    assert safe_stem(name) == expected


def test_writer_puts_overlay_and_raw_map_in_the_original_geometry(tmp_path: Path, predictor: Predictor,
                                                                   real_grays: list[np.ndarray]) -> None:
    gray = real_grays[1]
    item = HeatmapWriter(predictor, tmp_path / "out").write_result("x/person7_bacteria_1.jpeg", gray)
    name = heatmap_name("x/person7_bacteria_1.jpeg")
    assert name.startswith("person7_bacteria_1-") and len(name) == len("person7_bacteria_1-") + 8
    assert item.overlay == (tmp_path / "out" / f"{name}.cam.png").resolve()
    raw = np.load(item.raw_map, allow_pickle=False)
    assert raw.shape == gray.shape and raw.dtype == np.float32
    with Image.open(item.overlay) as img:
        overlay = np.asarray(img.convert("RGB"))
    band = overlay.shape[0] - gray.shape[0]
    assert overlay.shape[1] == gray.shape[1] and 0 < band < gray.shape[0] // 3
    # the caption and the colour bar sit in a band above: every pixel of the image is the blend, none covered (the
    # caption box hid the top-left corner, where side markers are)
    assert np.array_equal(overlay[band:], blend(gray, raw))
    ramp = colorize(np.linspace(0.0, 1.0, 64, dtype=np.float32)[None])[0]
    top = overlay[:band].reshape(-1, 3)
    for colour in (ramp[0], ramp[-1]):  # both ends of the turbo bar are in the band
        assert (np.abs(top.astype(int) - colour.astype(int)).sum(axis=1) <= 6).any()


def test_writer_never_writes_outside_its_folder(tmp_path: Path, predictor: Predictor) -> None:
    out = tmp_path / "deep" / "out"
    writer = HeatmapWriter(predictor, out)
    writer.write("../../../escape me.png", np.full((70, 90), 120, np.uint8))
    written = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    name = heatmap_name("../../../escape me.png")
    assert name.startswith("escape_me-") and written == [f"{name}.cam.npy", f"{name}.cam.png"]
    assert all(p.parent == out for p in tmp_path.rglob("*.cam.*"))


def test_two_inputs_with_the_same_stem_do_not_overwrite_each_other(tmp_path: Path, predictor: Predictor) -> None:
    writer = HeatmapWriter(predictor, tmp_path)
    first = writer.write("a/img.png", np.full((70, 90), 100, np.uint8))
    second = writer.write("b/img.jpeg", np.full((70, 90), 200, np.uint8))
    again = writer.write("a/img.png", np.full((70, 90), 100, np.uint8))  # the same input: the same name
    assert first.name.startswith("img-") and second.name.startswith("img-") and first != second
    assert again == first and len(list(tmp_path.glob("*.cam.png"))) == 2


def test_writer_names_files_after_the_method(tmp_path: Path, predictor: Predictor) -> None:
    writer = HeatmapWriter(predictor, tmp_path, method="occlusion", window=16, stride=16)
    assert writer.write("x.png", np.full((70, 90), 100, np.uint8)).name == f"{heatmap_name('x.png')}.occlusion-w16s16.png"


def test_writer_checks_the_layer_before_the_first_image(tmp_path: Path, predictor: Predictor) -> None:
    with pytest.raises(ConfigError, match="valid layers"):
        HeatmapWriter(predictor, tmp_path, layer="nope")


def test_blend_leaves_zero_saliency_pixels_gray_and_colours_hot_ones() -> None:
    gray = np.full((4, 4), 90, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    rgb = blend(gray, heat)
    assert (rgb[1:, 1:] == 90).all()
    assert len(set(rgb[0, 0].tolist())) > 1


def test_contact_sheet_links_thumbnails_and_escapes_names(tmp_path: Path, predictor: Predictor) -> None:
    writer = HeatmapWriter(predictor, tmp_path)
    items = [writer.write_result("<i onload=x>&.png", np.full((300, 400), 100, np.uint8))]
    page = write_contact_sheet(tmp_path, items).read_text()
    assert "<i onload" not in page and "&lt;i onload=x&gt;&amp;.png" in page
    with Image.open(tmp_path / "thumbs" / items[0].overlay.name) as thumb:
        assert max(thumb.size) == 256
    assert f"thumbs/{items[0].overlay.name}" in page
    assert f"map 1 = {items[0].scale:.3g}" in page  # films compared across one sheet (an explain audit)


def test_writer_checks_the_occlusion_window_before_the_first_image(tmp_path: Path, predictor: Predictor) -> None:
    with pytest.raises(ConfigError, match="occlusion window"):
        HeatmapWriter(predictor, tmp_path, method="occlusion", window=500)


def test_the_contact_sheet_tells_files_of_one_name_apart(tmp_path: Path) -> None:
    """Every series of a PACS export holds an IM00001: the sheet named each one 'IM00001'."""
    from types import SimpleNamespace

    from pneumo.explain.overlay import Written

    written = []
    for i in range(2):
        overlay = tmp_path / "maps" / f"IM00001-{i}.cam.png"
        overlay.parent.mkdir(exist_ok=True)
        Image.new("RGB", (32, 32)).save(overlay)
        prediction = SimpleNamespace(label="NORMAL", p_pneumonia=0.1, threshold=0.5, reason=None)
        written.append(Written(str(tmp_path / "pacs" / f"P{i}" / "IM00001"), overlay, overlay, prediction))
    page = write_contact_sheet(tmp_path / "maps", written).read_text()
    assert "P0/IM00001" in page and "P1/IM00001" in page


def test_an_overlay_names_the_model_and_operating_point_that_drew_it(tmp_path: Path, predictor: Predictor) -> None:
    """An audit-trail review: a second model's map written into the same folder replaced the first's under the same
    name, and nothing in the file said which model drew it. Its PNG text chunks say so."""
    from PIL import Image

    path = HeatmapWriter(predictor, tmp_path).write("x.png", np.full((70, 90), 100, np.uint8))
    with Image.open(path) as image:
        text = dict(image.text)
    assert text["pneumo:model_id"] == predictor.model_id and text["pneumo:method"] == "cam"
    assert float(text["pneumo:threshold"]) == pytest.approx(predictor.threshold)
    assert text["pneumo:threshold_policy"] == str(predictor.meta.threshold_policy)
    assert float(text["pneumo:map_scale"]) >= 0.0  # the unscaled value drawn as 1 (an explain audit)


def test_the_colour_bar_says_what_one_was_before_scaling() -> None:
    """An explain audit: a weak map was drawn as red as a strong one and no file kept how strong it was."""
    from pneumo.explain.render import bar_label

    assert bar_label("occlusion", 0.0213).endswith("1 = a drop of 0.0213 in the log-odds")
    assert "0.5 unscaled Grad-CAM" in bar_label("gradcam", 0.5)
    assert bar_label("gradcam") == bar_label("gradcam", None) and "=" not in bar_label("gradcam")


def test_a_map_against_the_models_call_says_it_is_drawn_at_full_scale() -> None:
    """--target pneumonia on a film scored P 0.002 drew a full-red "evidence for PNEUMONIA" patch: each map is scaled to
    its own maximum, and the caption did not say that this one explains a class the model does not call (an explain
    audit: raw peaks 4-400x below a pneumonia film's)."""
    from types import SimpleNamespace

    from pneumo.explain.render import caption_lines

    normal = SimpleNamespace(label="NORMAL", p_pneumonia=0.002, threshold=0.86, reason=None)
    said = "the call is NORMAL: a map for a class it did not call, scaled to its own maximum"
    assert caption_lines(normal, toward="PNEUMONIA")[-1] == said
    assert said not in caption_lines(normal, toward="NORMAL")  # the predicted label's own map
    called = SimpleNamespace(label="PNEUMONIA", p_pneumonia=0.97, threshold=0.86, reason=None)
    assert not any("did not call" in line for line in caption_lines(called, toward="PNEUMONIA"))
    virus = SimpleNamespace(label="virus", p_pneumonia=0.9, threshold=0.5, reason=None)  # a 3-class call
    assert not any("did not call" in line for line in caption_lines(virus, toward="pneumonia"))


def test_the_contact_sheet_puts_films_without_a_verdict_first_then_the_highest_p_pneumonia(tmp_path: Path) -> None:
    """A volume audit: a sheet of hundreds of maps was in input order, so a reviewer hunted for the positive calls."""
    from types import SimpleNamespace

    from pneumo.explain.overlay import Written

    written = []
    for name, p, reason in (("a", 0.2, None), ("b", 0.9, None), ("c", 0.5, "out of distribution"), ("d", 0.6, None)):
        overlay = tmp_path / "maps" / f"{name}.cam.png"
        overlay.parent.mkdir(exist_ok=True)
        Image.new("RGB", (32, 32)).save(overlay)
        prediction = SimpleNamespace(label="X", p_pneumonia=p, threshold=0.5, reason=reason)
        written.append(Written(str(tmp_path / f"{name}.png"), overlay, overlay, prediction))
    page = write_contact_sheet(tmp_path / "maps", written).read_text()
    shown = [page.index(f"<b>{name}.png</b>") for name in "cbda"]
    assert shown == sorted(shown)
