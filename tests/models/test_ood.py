"""OOD statistics on generated features: fit, threshold on val, safetensors round trip, integrity checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pneumo.errors import ModelError
from pneumo.models.ood import SUFFIX, fit_ood, load_ood, save_ood


def gaussian_features(n: int, *, dim: int = 32, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of correlated Gaussian features (class means 2 apart on the first axis), optionally shifted."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(dim, dim)) / np.sqrt(dim)
    y = rng.integers(0, 2, n)
    f = rng.normal(size=(n, dim)) @ mix
    f[:, 0] += 2.0 * y
    return f + shift, y


@pytest.fixture(scope="module")
def fitted():
    f_train, y_train = gaussian_features(400, seed=1)
    f_val, _ = gaussian_features(200, seed=2)
    return fit_ood(f_train, y_train, f_val, percentile=99.0), f_val


def test_threshold_is_the_stated_percentile_of_the_val_scores(fitted) -> None:
    stats, f_val = fitted
    assert stats.threshold == pytest.approx(np.percentile(stats.scores(f_val), 99.0))
    assert stats.flags(stats.scores(f_val)).mean() == pytest.approx(0.01, abs=0.006)
    assert (stats.n_train, stats.n_val, stats.percentile) == (400, 200, 99.0)


def test_shifted_features_score_far_above_the_training_distribution(fitted) -> None:
    stats, _ = fitted
    fresh, _ = gaussian_features(200, seed=3)
    shifted, _ = gaussian_features(200, shift=3.0, seed=3)
    assert stats.flags(stats.scores(fresh)).mean() < 0.1
    assert stats.flags(stats.scores(shifted)).mean() > 0.9
    assert np.median(stats.scores(shifted)) > 2 * np.median(stats.scores(fresh))


def test_non_finite_features_are_flagged(fitted) -> None:
    stats, f_val = fitted
    bad = f_val[:2].copy()
    bad[0, 3], bad[1, 0] = np.nan, np.inf
    assert stats.flags(stats.scores(bad)).all()


def test_features_of_another_width_are_refused(fitted) -> None:
    stats, _ = fitted
    with pytest.raises(ModelError, match="expect"):
        stats.scores(np.zeros((2, stats.num_features + 1)))


def test_stats_round_trip_through_safetensors(fitted, tmp_path: Path) -> None:
    stats, f_val = fitted
    sidecar = tmp_path / "model.json"
    entry = save_ood(sidecar, stats)
    assert entry["file"] == "model" + SUFFIX and (tmp_path / entry["file"]).read_bytes()[:8] != b"\x80\x04"  # no pickle
    sidecar.write_text(json.dumps({"ood": entry}))
    loaded = load_ood(sidecar, json.loads(sidecar.read_text())["ood"])
    assert loaded.threshold == stats.threshold and loaded.method == stats.method
    np.testing.assert_allclose(loaded.scores(f_val), stats.scores(f_val), rtol=1e-4)


def test_a_changed_stats_file_is_refused(fitted, tmp_path: Path) -> None:
    stats, _ = fitted
    sidecar = tmp_path / "model.json"
    entry = save_ood(sidecar, stats)
    path = tmp_path / entry["file"]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_ood(sidecar, entry)
    path.unlink()
    with pytest.raises(ModelError, match="missing"):
        load_ood(sidecar, entry)


def test_a_sidecar_without_ood_entry_has_no_stats(tmp_path: Path) -> None:
    assert load_ood(tmp_path / "model.json", None) is None


def test_percentiles_outside_the_sane_range_are_refused() -> None:
    f, y = gaussian_features(50)
    with pytest.raises(ModelError, match="percentile"):
        fit_ood(f, y, f, percentile=100.0)


def test_scores_are_the_mahalanobis_distance_to_the_nearest_class_mean_batch_after_batch(fitted) -> None:
    """Computed directly, per class, in float64: the cached statistics give the same distances on every call."""
    stats, f_val = fitted
    precision, means = stats.precision.astype(np.float64), stats.means.astype(np.float64)
    direct = np.sqrt(np.min([np.einsum("ij,jk,ik->i", f_val - m, precision, f_val - m) for m in means], axis=0))
    for rows in (slice(0, 7), slice(7, None), slice(None)):  # the cache is built on the first call and reused
        np.testing.assert_allclose(stats.scores(f_val[rows]), direct[rows], rtol=1e-9)


def test_scores_run_blas_on_one_thread_and_give_the_setting_back(fitted) -> None:
    """A second BLAS thread spinning beside the model and the decoders cost the service a quarter of its throughput
    (issue 24): the distance product runs on the calling thread only, and the process's setting is restored."""
    from threadpoolctl import threadpool_info

    from pneumo.models.ood import _one_blas_thread

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()
    with _one_blas_thread():
        assert blas_threads() and set(blas_threads()) == {1}
    assert blas_threads() == before
    stats, f_val = fitted
    np.testing.assert_array_equal(stats.scores(f_val), stats.scores(f_val.copy()))
    assert blas_threads() == before


def test_one_worker_leaving_the_blas_limit_does_not_lift_it_under_another() -> None:
    """Two batch workers score side by side (predict, serve): the first one out restored the process's setting while
    the second was still computing (threadpoolctl's limit is process-wide)."""
    import threading

    from threadpoolctl import threadpool_info, threadpool_limits

    from pneumo.models.ood import _one_blas_thread

    def blas_threads() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    inside, first_out, seen = threading.Event(), threading.Event(), []

    def second() -> None:
        with _one_blas_thread():
            inside.set()
            first_out.wait(10)
            seen.append(blas_threads())

    with threadpool_limits(limits=2, user_api="blas"):  # a setting above 1 to tell apart (xdist workers run 1)
        if blas_threads() != {2}:
            pytest.skip("this BLAS cannot run 2 threads")
        worker = threading.Thread(target=second)
        with _one_blas_thread():
            worker.start()
            inside.wait(10)
        first_out.set()
        worker.join(10)
        assert seen == [{1}]  # the first one out had set it back to 2 under the second (OpenBLAS, pthreads)
