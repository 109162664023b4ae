"""harmonia.geometry: fixed-size crops around a point and resampling onto a common grid."""

from __future__ import annotations

import numpy as np
import pytest

from harmonia.geometry import crop_around, to_grid


def test_crop_is_an_exact_copy_centred_on_the_point():
    volume = np.arange(10 * 20 * 30, dtype=float).reshape(10, 20, 30)
    crop = crop_around(volume, (5.2, 10.0, 14.6), (5, 7, 9), fill=-1)
    np.testing.assert_array_equal(crop, volume[3:8, 7:14, 11:20])
    assert crop[2, 3, 4] == volume[5, 10, 15]


def test_crop_leaving_the_volume_is_padded_with_fill():
    volume = np.ones((4, 6, 6))
    crop = crop_around(volume, (0, 0, 5), (3, 4, 4), fill=-1000)
    assert crop.shape == (3, 4, 4)
    np.testing.assert_array_equal(crop[1:, 2:, :3], 1)
    assert (crop[0] == -1000).all() and (crop[:, :2] == -1000).all() and (crop[:, :, 3] == -1000).all()
    assert (crop_around(volume, (50, 0, 0), (3, 3, 3), fill=7) == 7).all()


def test_crop_checks_its_axes():
    with pytest.raises(ValueError, match="3 axes"):
        crop_around(np.ones((4, 4, 4)), (1, 1), (2, 2, 2), fill=0)


def test_to_grid_resamples_to_the_target_spacing():
    volume = np.zeros((1, 40, 40))
    volume[0, 10:30, 10:30] = 1  # a 20 x 20 pixel square at 1 mm
    grid = to_grid(volume, (1.0, 1.0), size=16, target=2.0, order=0)
    assert grid.shape == (1, 16, 16)
    assert grid.sum() == pytest.approx(100, abs=12)  # 10 x 10 pixels at 2 mm
