"""The synthetic frame generator: shapes, hit counts, pattern geometry, noise model, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acbmse_cli.errors import InputError
from acbmse_cli.synthetic import CROSS, LINE, SyntheticConfig, generate_pairs


@pytest.fixture(scope="module")
def pairs():
    return generate_pairs(300, seed=11)


def test_shapes_dtypes_and_pattern_labels(pairs):
    assert pairs.input.shape == (300, 1, 88, 128)
    assert pairs.target.shape == (300, 1, 88, 128)
    assert pairs.input.dtype == np.float32 and pairs.target.dtype == np.float32
    assert pairs.pattern.shape == (300,)
    assert set(np.unique(pairs.pattern)) == {CROSS, LINE}
    # About half of each with the default cross_fraction 0.5: binomial(300, 0.5) is 150 +- 8.7.
    assert 100 < (pairs.pattern == CROSS).sum() < 200


def test_signal_and_noise_hit_counts(pairs):
    signal = (pairs.target != 0).sum(axis=(1, 2, 3))
    noise = ((pairs.input != 0) & (pairs.target == 0)).sum(axis=(1, 2, 3))
    # About 200 signal hits per frame (scale 0.7..1.3 of a 200-hit pattern).
    assert signal.min() >= 100 and signal.max() <= 320
    assert 180 <= signal.mean() <= 225
    # Noise: Poisson with mean 30; the mean of 300 frames is 30 +- 0.32.
    assert 28.5 <= noise.mean() <= 31.5
    assert noise.min() >= 5 and noise.max() <= 60
    # The seed's detector frames: about 230 input hits in 11,264 pixels.
    assert 210 <= (signal + noise).mean() <= 255


def test_noise_model_target_hits_are_input_hits_with_the_same_values(pairs):
    target_hit = pairs.target != 0
    input_hit = pairs.input != 0
    assert np.all(input_hit[target_hit])  # every signal hit is in the input
    np.testing.assert_array_equal(pairs.input[target_hit], pairs.target[target_hit])
    assert np.all(pairs.input[~input_hit] == 0) and np.all(pairs.target[~target_hit] == 0)


def test_values_are_tof_like(pairs):
    config = SyntheticConfig()
    for array in (pairs.input, pairs.target):
        hits = array[array != 0]
        assert hits.min() >= config.tof_min and hits.max() <= config.tof_max
    # Noise values are uniform over [tof_min, tof_max]: mean 60, and they fill the range.
    noise = pairs.input[(pairs.input != 0) & (pairs.target == 0)]
    assert abs(noise.mean() - 60.0) < 2.0
    assert noise.min() < 25 and noise.max() > 95


def _coords(frame: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(frame)
    return np.stack([rows, cols], axis=1).astype(np.float64)


def test_lines_are_straight_and_two_pixels_thick(pairs):
    for i in np.flatnonzero(pairs.pattern == LINE)[:40]:
        xy = _coords(pairs.target[i, 0])
        centred = xy - xy.mean(axis=0)
        # Principal axes: the spread across the line is that of a 2-pixel-wide band, along it much larger.
        across, along = np.sqrt(np.linalg.eigvalsh(centred.T @ centred / len(xy)))
        assert across < 1.0, (i, across)
        assert along > 15.0, (i, along)


def test_crosses_have_a_horizontal_and_a_vertical_arm(pairs):
    for i in np.flatnonzero(pairs.pattern == CROSS)[:40]:
        hit = pairs.target[i, 0] != 0
        rows_used = np.flatnonzero(hit.any(axis=1))
        cols_used = np.flatnonzero(hit.any(axis=0))
        # A two-pixel-thick horizontal arm: two rows hold most of the width covered.
        row_counts = np.sort(hit.sum(axis=1))[::-1]
        col_counts = np.sort(hit.sum(axis=0))[::-1]
        assert row_counts[0] == row_counts[1] == len(cols_used)
        assert col_counts[0] == col_counts[1] == len(rows_used)
        assert len(cols_used) >= 30 and len(rows_used) >= 20


def test_patterns_are_shifted_and_scaled(pairs):
    centres = np.array([_coords(pairs.target[i, 0]).mean(axis=0) for i in range(len(pairs.pattern))])
    spread = centres.std(axis=0)
    assert spread[0] > 8 and spread[1] > 12  # pattern centres move around the 88 x 128 frame
    crosses = np.flatnonzero(pairs.pattern == CROSS)
    widths = np.array([np.ptp(_coords(pairs.target[i, 0])[:, 1]) for i in crosses])
    assert widths.max() / widths.min() > 1.5  # scales from 0.7 to 1.3


def test_same_seed_same_frames_other_seed_other_frames():
    a = generate_pairs(5, seed=3)
    b = generate_pairs(5, seed=3)
    c = generate_pairs(5, seed=4)
    np.testing.assert_array_equal(a.input, b.input)
    np.testing.assert_array_equal(a.target, b.target)
    np.testing.assert_array_equal(a.pattern, b.pattern)
    assert not np.array_equal(a.target, c.target)
    assert not np.array_equal(a.input, c.input)


def test_a_generator_can_be_passed_and_advances():
    rng = np.random.default_rng(7)
    first = generate_pairs(2, seed=rng)
    second = generate_pairs(2, seed=rng)
    np.testing.assert_array_equal(first.input, generate_pairs(2, seed=7).input)
    assert not np.array_equal(first.input, second.input)
    # Tuple seeds (used for per-step training batches) are reproducible too.
    np.testing.assert_array_equal(generate_pairs(2, seed=(1, 2)).input, generate_pairs(2, seed=(1, 2)).input)


def test_global_random_state_is_untouched():
    np_state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state().clone()
    generate_pairs(3, seed=0)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_small_frames_and_config_options():
    config = SyntheticConfig(height=16, width=24, noise_hits=0.0, cross_fraction=1.0)
    small = generate_pairs(20, seed=1, config=config)
    assert small.input.shape == (20, 1, 16, 24)
    assert np.all(small.pattern == CROSS)
    np.testing.assert_array_equal(small.input, small.target)  # no noise asked for
    assert (small.target != 0).sum(axis=(1, 2, 3)).min() > 10
    assert generate_pairs(0, seed=1).input.shape == (0, 1, 88, 128)


@pytest.mark.parametrize("hits", [50, 200, 800])
def test_signal_hits_sets_the_typical_number_of_hits_per_frame(hits):
    pairs = generate_pairs(200, seed=5, config=SyntheticConfig(signal_hits=hits))
    counts = (pairs.target != 0).sum(axis=(1, 2, 3))
    # Patterns drawn near an edge are clipped, so the mean falls a little short of the request.
    assert 0.9 * hits <= counts.mean() <= 1.1 * hits
    # The noise model is left as it is: about 30 noise hits per frame whatever the signal.
    noise = ((pairs.input != 0) & (pairs.target == 0)).sum(axis=(1, 2, 3))
    assert 27 <= noise.mean() <= 33


def test_thicker_signal_keeps_the_pattern_shapes():
    pairs = generate_pairs(60, seed=2, config=SyntheticConfig(signal_hits=800))
    for i in np.flatnonzero(pairs.pattern == LINE)[:20]:
        xy = _coords(pairs.target[i, 0])
        centred = xy - xy.mean(axis=0)
        across, along = np.sqrt(np.linalg.eigvalsh(centred.T @ centred / len(xy)))
        # an 8-pixel band: the spread across it is 8 / sqrt(12) = 2.3 pixels (less where clipped)
        assert 1.5 < across < 3.0 and along > 3 * across, (i, across, along)


def test_signal_hits_at_the_natural_size_gives_the_default_frames():
    config = SyntheticConfig(height=16, width=24)
    natural = SyntheticConfig(height=16, width=24, signal_hits=None)
    np.testing.assert_array_equal(
        generate_pairs(4, seed=1, config=config).target, generate_pairs(4, seed=1, config=natural).target
    )
    assert SyntheticConfig(signal_hits=200).pattern_shape()[0] == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"signal_hits": 9}, r"--signal-hits must be an integer of at least 10, got 9$"),
        ({"signal_hits": 1409}, r"--signal-hits must be at most 1408, got 1409$"),
        ({"signal_hits": 50.5}, r"--signal-hits must be an integer"),
        ({"height": 4}, r"frame height must be an integer of at least 8, got 4$"),
        ({"width": 7.5}, r"frame width must be an integer of at least 8, got 7\.5$"),
        ({"tof_min": 0.0}, r"need 0 < tof_min < tof_max, got 0\.0 and 100\.0$"),
        ({"tof_min": 50.0, "tof_max": 40.0}, r"need 0 < tof_min < tof_max, got 50\.0 and 40\.0$"),
        ({"scale_min": 2.0, "scale_max": 1.0}, r"need 0 < scale_min <= scale_max, got 2\.0 and 1\.0$"),
        ({"noise_hits": -1.0}, r"noise_hits must be finite and non-negative, got -1\.0$"),
        ({"noise_hits": float("nan")}, r"noise_hits must be finite and non-negative, got nan$"),
        ({"cross_fraction": 1.5}, r"cross_fraction must lie in \[0, 1\], got 1\.5$"),
    ],
)
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(InputError, match=match):
        SyntheticConfig(**kwargs)


def test_bad_count_is_refused():
    with pytest.raises(InputError, match="count"):
        generate_pairs(-1, seed=0)
