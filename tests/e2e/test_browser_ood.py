"""The page's out-of-distribution warning in a real browser (Debian's Chromium via Playwright), with the shipped
default model and its OOD statistics: shown for a photograph, gone again for the X-ray analysed next."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def page_url(serving) -> Iterator[str]:
    """uvicorn in a thread serving the shipped default model (PyTorch backend: no export needed)."""
    from pneumo.infer.predictor import Predictor

    with serving(Predictor(None, backend="torch", threads=2), start_timeout_s=60) as url:
        yield url + "/"


@pytest.fixture()
def page(page_url: str) -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(page_url)
        yield page
        browser.close()


def test_a_photo_gets_the_warning_and_the_next_xray_does_not(page, full_data: Path, tmp_path: Path) -> None:
    from skimage import data
    from skimage.io import imsave

    # a photograph far outside the X-rays (the page's behaviour is under test here; how many photos the score
    # catches is bench/bench_ood.py's: 21 of 22 for the shipped fine-tune, which misses the cat `chelsea`)
    photo = tmp_path / "astronaut.png"
    imsave(photo, data.astronaut())
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#ood-warning:not([hidden])")
    assert "Not assessed" in page.inner_text("#ood-warning")
    assert "distance" in page.inner_text("#ood-detail") and "limit" in page.inner_text("#ood-detail")
    # no verdict beside the warning: no NORMAL/PNEUMONIA, no verdict colour (issue 23, finding 1)
    assert page.inner_text("#label") == "NOT ASSESSED" and page.is_visible("#label.unassessed")
    assert "No verdict" in page.inner_text("#label-explain")
    page.set_input_files("#file", str(full_data / "test" / "NORMAL" / "IM-0003-0001.jpeg"))
    # the page clears the previous result at once (no stale warning), then shows the new one
    page.wait_for_selector("#label.positive, #label.negative")
    assert page.is_hidden("#ood-warning")
    assert page.inner_text("#label") in ("NORMAL", "PNEUMONIA")
    # the calibrated probability is shown with the threshold on its own scale: the two can never disagree
    assert "the threshold on this scale" in page.inner_text("#calibrated-threshold")


def test_the_five_cases_of_issue_23_on_the_page(page, full_data: Path, tmp_path: Path) -> None:
    """A normal X-ray and a pneumonia X-ray get a verdict; a photo and an inverted X-ray get "NOT ASSESSED" with the
    reason; a broken file gets an error and no result. Screenshots go to the folder $PNEUMO_SCREENSHOTS names, if set
    (not committed: they show dataset images)."""
    import os

    import numpy as np
    from PIL import Image
    from skimage import data

    normal = full_data / "test" / "NORMAL" / "IM-0003-0001.jpeg"
    pneumonia = min((full_data / "test" / "PNEUMONIA").glob("*.jpeg"))
    inverted = tmp_path / "inverted.png"
    Image.fromarray(255 - np.asarray(Image.open(normal).convert("L"))).save(inverted)
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(normal.read_bytes()[:600])
    shots = os.environ.get("PNEUMO_SCREENSHOTS")

    def shot(name: str) -> None:
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(shots) / f"{name}.png"), full_page=True)

    for name, path in (("normal", normal), ("pneumonia", pneumonia)):
        page.set_input_files("#file", str(path))
        page.wait_for_selector("#label.positive, #label.negative")
        assert page.inner_text("#label") in ("NORMAL", "PNEUMONIA") and page.is_hidden("#ood-warning")
        shot(name)
    for name, path, why in (("photo", photo, "out of distribution"), ("inverted", inverted, "inverted")):
        page.set_input_files("#file", str(path))
        page.wait_for_selector("#label.unassessed")
        assert page.inner_text("#label") == "NOT ASSESSED" and why in page.inner_text("#label-explain")
        shot(name)
    page.set_input_files("#file", str(broken))
    page.wait_for_selector("#status.error")
    assert page.is_hidden("#result")
    shot("broken")


def test_an_image_without_a_verdict_shows_no_bar_and_no_map_until_asked_and_says_first_it_is_not_normal(
        page, full_data: Path, tmp_path: Path) -> None:
    """An accessibility audit: "NOT ASSESSED" came with P(pneumonia) 0.996 in bold, a bar filled to 99.6 % and a
    full-strength heat map; on a phone the map came before the warning, and "not a normal result" was a grey hint.
    The warning comes first and says it; no bar; the map at 0 % opacity until the user raises it; the next verdict
    shows its map again. A NORMAL output is "not flagged", not a diagnosis, and the status line says so."""
    from skimage import data
    from skimage.io import imsave

    photo = tmp_path / "astronaut.png"
    imsave(photo, data.astronaut())
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#label.unassessed")
    assert "not a normal result" in page.inner_text("#ood-warning") and page.is_hidden("#meter")
    assert "for audit only" in page.inner_text("#bar-title")
    assert page.input_value("#opacity") == "0" and "not assessed" in page.inner_text("#status")
    page.set_viewport_size({"width": 320, "height": 700})  # a phone: one column, the warning above the image
    top = page.eval_on_selector("#ood-warning", "e => e.getBoundingClientRect().top")
    assert top < page.eval_on_selector("#image", "e => e.getBoundingClientRect().top")
    assert page.eval_on_selector("#notice", "e => e.closest('main') !== null")  # the skip link does not pass it by
    page.set_input_files("#file", str(full_data / "test" / "NORMAL" / "IM-0003-0001.jpeg"))
    page.wait_for_selector("#label.positive, #label.negative")
    assert page.input_value("#opacity") == "70" and page.is_visible("#meter")
    status, explain = page.inner_text("#status"), page.inner_text("#label-explain")
    assert "Not a diagnosis" in status and "score" in status and "threshold" in status
    assert explain.startswith("Not flagged" if page.inner_text("#label") == "NORMAL" else "Flagged")
