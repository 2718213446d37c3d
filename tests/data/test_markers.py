"""Marker/text detection and in-painting: generated glyphs on generated chests, and real markers in the data."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pneumo.data.markers import find_markers, find_text, remove_markers
from pneumo.data.preprocess import prepare
from pneumo.errors import ConfigError, InputError


def _chest(size: int = 224, seed: int = 0) -> np.ndarray:
    """A dark film with a bright, smooth, noisy 'body' in the middle (no glyphs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    body = 150 * np.exp(-(((xx - 0.5) / 0.32) ** 2 + ((yy - 0.55) / 0.45) ** 2))
    img = 20 + body + rng.normal(0, 4, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def _with_letter(img: np.ndarray, text: str, org: tuple[int, int]) -> np.ndarray:
    out = img.copy()
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1, cv2.LINE_AA)
    return out


def test_a_letter_in_the_corner_is_found_and_inpainted():
    clean = _chest()
    marked = _with_letter(clean, "R", (8, 22))
    drawn = np.abs(marked.astype(int) - clean.astype(int)) > 60
    mask = find_markers(marked)
    assert mask[drawn].mean() > 0.9  # the glyph's strokes are covered
    assert mask.mean() < 0.01  # and little else
    fixed = remove_markers(marked)
    assert np.abs(fixed.astype(int) - clean.astype(int))[drawn].mean() < 25  # strokes are back near the film value
    assert np.array_equal(fixed[~mask], marked[~mask])  # nothing outside the mask changes


def test_text_in_the_middle_of_the_body_is_left_alone():
    marked = _with_letter(_chest(), "R", (105, 120))
    assert not find_markers(marked).any()


def test_no_glyph_no_change():
    clean = _chest(seed=3)
    assert not find_markers(clean).any()
    assert remove_markers(clean) is clean


def test_bad_input_and_method():
    with pytest.raises(InputError):
        find_markers(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ConfigError):
        remove_markers(_chest(), "blur")


def test_prepare_inpaints_markers_only_when_asked():
    marked = _with_letter(_chest(256), "A-P", (6, 20))
    plain = prepare(marked, size=224)
    cleaned = prepare(marked, size=224, markers="inpaint")
    assert find_markers(plain).any() and not find_markers(cleaned).any()


def test_real_markers_are_found_on_the_validation_images(full_data: Path):
    """The Kaggle val images carry burnt-in "R" / "A-P" markers near the top-left or left edge: most are found, and
    what is found is small and sits near an edge."""
    files = sorted((full_data / "val").glob("*/*.jpeg"))
    assert len(files) == 16
    found = 0
    for f in files:
        img = prepare(np.asarray(Image.open(f).convert("L")), size=224)
        mask = find_markers(img)
        found += bool(mask.any())
        ys, xs = np.nonzero(mask)
        assert mask.mean() < 0.03
        if len(xs):
            near = (xs < 0.2 * 224) | (xs >= 0.8 * 224) | (ys < 0.2 * 224) | (ys >= 0.85 * 224)
            assert near.mean() > 0.8
    assert found >= 12


def _markers_one_component_at_a_time(img: np.ndarray) -> np.ndarray:
    """The detector as first written (OpenCV's default labelling, one boolean pass per component): the reference the
    vectorised one must match pixel for pixel."""
    from pneumo.data import markers as m

    h, w = img.shape
    k = max(3, round(0.12 * min(h, w)) | 1)
    tophat = cv2.morphologyEx(img, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    candidates = ((img >= m.MIN_BRIGHT) & (tophat >= m.MIN_TOPHAT) & (img - tophat <= m.MAX_BACKGROUND)).astype(np.uint8)
    joined = cv2.dilate(candidates, cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3)))
    n, comp, stats, centroids = cv2.connectedComponentsWithStats(joined, connectivity=8)
    keep = np.zeros(n, dtype=bool)
    for i in range(1, n):
        _, _, bw, bh, _ = stats[i]
        cx, cy = centroids[i]
        keep[i] = (bh <= m.MAX_HEIGHT * h and bw <= m.MAX_WIDTH * w
                   and (cx < m.EDGE_BAND * w or cx > (1 - m.EDGE_BAND) * w or cy < m.TOP_BAND * h
                        or cy > (1 - m.BOTTOM_BAND) * h)
                   and int(candidates[comp == i].sum()) >= m.MIN_PIXELS)
    mask = keep[comp] & (joined > 0)
    return cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))) > 0


def test_the_vectorised_detector_finds_exactly_what_the_per_component_one_found(data_slice: Path):
    """Real images of the slice (at 224 px and as decoded), generated glyph fields, and the degenerate cases."""
    images = [prepare(np.asarray(Image.open(f).convert("L")), size=224) for f in sorted(data_slice.rglob("*.jpeg"))[:40]]
    images += [np.asarray(Image.open(f).convert("L")) for f in sorted(data_slice.rglob("*.jpeg"))[:5]]
    rng = np.random.default_rng(0)
    for seed in range(6):  # many glyphs and specks everywhere, some too big, some too small
        img = _chest(224, seed)
        for _ in range(40):
            x, y = (int(v) for v in rng.integers(0, 224, 2))
            img = _with_letter(img, str(rng.choice(["R", "L", "A-P", "1234", ".", "WWWWWW"])), (x, y))
        images.append(img)
    images += [np.zeros((224, 224), np.uint8), np.full((224, 224), 255, np.uint8), _chest(97), _chest(300)[:, :200]]
    assert sum(bool(_markers_one_component_at_a_time(img).any()) for img in images) >= 10  # the comparison has teeth
    for img in images:
        np.testing.assert_array_equal(find_markers(img), _markers_one_component_at_a_time(img))


def _with_text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.6) -> np.ndarray:
    out = img.copy()
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_PLAIN, scale, 230, 1, cv2.LINE_AA)
    return out


@pytest.mark.parametrize(("text", "org"), [("1754", (170, 10)), ("17:54:36", (160, 12)), ("KV59", (178, 216)),
                                           ("ID:1067", (4, 216))])
@pytest.mark.parametrize("scale", [0.5, 0.6, 0.8])
def test_numbers_and_words_in_the_corners_are_found_by_the_text_rule(text, org, scale):
    clean = _chest()
    marked = _with_text(clean, text, org, scale)
    drawn = np.abs(marked.astype(int) - clean.astype(int)) > 60
    mask = find_text(marked)
    assert mask[drawn].mean() > 0.85
    assert mask.mean() < 0.01
    fixed = remove_markers(marked, "inpaint-text")
    assert np.abs(fixed.astype(int) - clean.astype(int))[drawn].mean() < 30


def test_the_text_rule_leaves_the_body_and_single_strokes_alone():
    assert not find_text(_chest(seed=3)).any()
    assert not find_text(_with_text(_chest(), "1754", (100, 120), 0.8)).any()  # inside the body: not a corner
    bar = _chest()
    cv2.line(bar, (175, 12), (220, 20), 230, 2)  # a clavicle-like bright bar in the corner: one stroke per row
    cv2.line(bar, (200, 200), (200, 223), 230, 2)  # a wire
    assert not find_text(bar).any()


# train images (never validation or test) whose corner text the glyph rule misses, and the box it lies in
CORNER_TEXT = [("PNEUMONIA/person330_virus_683.jpeg", np.s_[200:, 168:]),  # "KV59", bottom right, beside a skin line
               ("PNEUMONIA/person1602_bacteria_4218.jpeg", np.s_[:20, 168:]),  # a time, "17:54:36", top right
               ("PNEUMONIA/person1227_virus_2078.jpeg", np.s_[200:, :60])]  # "ID:1067247", bottom left


@pytest.mark.parametrize(("name", "box"), CORNER_TEXT)
def test_real_corner_text_is_inpainted_by_inpaint_text_only(full_data: Path, name: str, box):
    raw = np.asarray(Image.open(full_data / "train" / name).convert("L"))
    plain = prepare(raw, size=224)
    assert not find_markers(plain)[box].any()  # the glyph rule (method "inpaint") misses it ...
    assert find_text(plain)[box].sum() >= 100  # ... the text rule finds it
    v1, v2 = prepare(raw, size=224, markers="inpaint"), prepare(raw, size=224, markers="inpaint-text")
    assert np.array_equal(v1[box], plain[box]) and not np.array_equal(v2[box], plain[box])
    assert np.array_equal(v2[60:170, 60:170], v1[60:170, 60:170])  # the lungs are untouched


def test_the_text_rule_stays_in_the_corners_on_the_validation_images(full_data: Path):
    for f in sorted((full_data / "val").glob("*/*.jpeg")):
        mask = find_text(prepare(np.asarray(Image.open(f).convert("L")), size=224))
        assert mask.mean() < 0.01
        assert not mask[34:190, 68:156].any()  # nothing between the corner boxes
