"""Tests for nni_labelfree.data.fractal (and fractal_ifs): the FractalDB-style IFS generator of UnrealNAS's RLGD."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from nni_labelfree.data.fractal import (FRACTAL_MEAN, FRACTAL_STD, FractalImages, IFSCategory, RenderSettings,
                                        SearchSettings, categories_from_dict, categories_to_dict, draw_candidate,
                                        filling_rates, fractal_weight_table, ifs_probabilities, load_categories,
                                        render_fractals, save_categories, search_categories, seeded_generator)
from nni_labelfree.data.fractal_ifs import _apply_flips

# Two maps scaling by 1/2 along x onto [0, 1/2] and [1/2, 1], and y -> y/2: the attractor is the segment y = 0.
SEGMENT = [[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0]]
# Four maps scaling by 1/2 onto the four quarters of the unit square: the attractor is the whole square, and the
# chaos game's points are uniform on it.
SQUARE = [[0.5, 0, 0, 0.5, e, f] for e in (0, 0.5) for f in (0, 0.5)]


@pytest.fixture(scope='module')
def search():
    return search_categories(4, seed=0)


@pytest.fixture(scope='module')
def categories(search):
    return search.accepted


def test_probabilities_are_proportional_to_the_absolute_determinant():
    maps = np.array([[1.0, 0.5, 0.2, 0.3, 0, 0], [-0.5, 0.5, 0.5, 0.5, 0.1, 0.2], [0.1, 0, 0, -0.2, 0, 0]])
    determinants = np.array([abs(0.3 - 0.1), abs(-0.25 - 0.25), abs(-0.02)])
    np.testing.assert_allclose(ifs_probabilities(maps), determinants / determinants.sum(), rtol=1e-12)
    with pytest.raises(ValueError, match='determinant 0'):
        ifs_probabilities([[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r'\[N, 6\]'):
        ifs_probabilities(np.zeros((2, 5)))


def test_weight_table_is_fractaldb_s():
    table = fractal_weight_table(0.4)
    assert table.shape == (25, 6) and np.array_equal(table[0], np.ones(6))
    for coefficient in range(6):
        rows = table[1 + 4 * coefficient: 5 + 4 * coefficient]
        np.testing.assert_allclose(rows[:, coefficient], [0.2, 0.6, 1.4, 1.8])
        assert np.array_equal(np.delete(rows, coefficient, axis=1), np.ones((4, 5)))
    np.testing.assert_allclose(fractal_weight_table(0.1)[1:5, 0], [0.8, 0.9, 1.1, 1.2])


def test_filling_rate_of_known_attractors():
    rates = filling_rates([np.array(SQUARE), np.array(SEGMENT)], [seeded_generator(0), seeded_generator(1)])
    # uniform points on the 500 x 500 pixels of the rescaled square: 1 - exp(-100000 / 500^2) of them are hit
    expected_square = (1 - np.exp(-100_000 / 500 ** 2)) * 500 ** 2 / 512 ** 2
    assert rates[0] == pytest.approx(expected_square, abs=0.005)
    assert rates[1] == pytest.approx(500 / 512 ** 2, rel=0.01)  # one row of 500 pixels


def test_diverging_system_gives_a_tiny_filling_rate_without_errors():
    exploding = np.array([[-3.0, 0, 0, -3.0, 1, 0], [3.0, 0.5, 0, 3.0, 0, 1]])
    rate = filling_rates([exploding, np.array(SQUARE)], [seeded_generator(2), seeded_generator(3)])
    assert rate[0] < 0.01 and rate[1] > 0.25


def test_search_accepts_at_or_above_the_threshold_and_rejects_below(search):
    accepted, rejected = search.accepted, search.rejected
    assert len(accepted) == 4 and len(rejected) > 0
    assert all(c.filling_rate >= 0.2 for c in accepted) and all(c.filling_rate < 0.2 for c in rejected)
    # every candidate up to the last accepted one was measured and recorded, in order
    tried = sorted(c.candidate for c in accepted + rejected)
    assert tried == list(range(len(tried))) and max(c.candidate for c in accepted) == tried[-1]
    for category in accepted + rejected:
        assert 2 <= len(category.maps) <= 7 and np.abs(category.maps).max() <= 1.0
        np.testing.assert_allclose(category.probabilities, ifs_probabilities(category.maps))


def test_search_rates_are_reproduced_from_the_candidate_seed(search):
    for category in search.accepted[:2] + search.rejected[:2]:
        maps, generator = draw_candidate(0, category.candidate)
        assert np.array_equal(maps, category.maps)
        assert filling_rates([maps], [generator])[0] == category.filling_rate


def test_search_does_not_depend_on_batch_size_and_differs_by_seed(search):
    again = search_categories(2, seed=0, settings=SearchSettings(batch_size=7))
    assert [c.candidate for c in again.accepted] == [c.candidate for c in search.accepted[:2]]
    assert all(np.array_equal(a.maps, b.maps) for a, b in zip(again.accepted, search.accepted))
    other = search_categories(1, seed=5)
    assert not np.array_equal(other.accepted[0].maps, search.accepted[0].maps)


def test_impossible_search_fails_with_the_fix():
    with pytest.raises(ValueError, match='lower min_filling_rate or raise max_candidates'):
        search_categories(1, settings=SearchSettings(min_filling_rate=0.9, max_candidates=3, batch_size=3))


def test_rendered_images_have_the_requested_size_dtype_and_range(categories):
    images = render_fractals(categories, [0, 1, 2, 3] * 5, np.repeat(np.arange(5), 4), image_size=16, seed=0)
    assert images.shape == (20, 16, 16) and images.dtype == np.uint8
    painted = (images > 0).mean(axis=(1, 2))
    assert painted.min() > 0.05 and painted.max() < 0.95  # a figure on a background, never empty or full
    assert (images == 255).any() and (images == 0).any()
    assert render_fractals(categories, [0], [0], image_size=24).shape == (1, 24, 24)


def test_rendering_is_deterministic_per_image(categories):
    ids, instances = np.arange(40) % 4, np.arange(40) // 4
    first = render_fractals(categories, ids, instances, 16, seed=3)
    assert np.array_equal(first, render_fractals(categories, ids, instances, 16, seed=3))
    # an image does not depend on the other images of its batch, nor on the batch size
    assert np.array_equal(first[[7, 21]], render_fractals(categories, ids[[7, 21]], instances[[7, 21]], 16, seed=3))
    small = render_fractals(categories, ids, instances, 16, seed=3, settings=RenderSettings(batch_size=3))
    assert np.array_equal(first, small)
    other = render_fractals(categories, ids, instances, 16, seed=4)
    assert all(not np.array_equal(a, b) for a, b in zip(first, other))


def test_categories_and_instances_differ(categories):
    images = render_fractals(categories, np.arange(8) % 4, np.arange(8) // 4, 32, seed=0).astype(float) / 255
    for a in range(8):
        for b in range(a + 1, 8):
            assert np.abs(images[a] - images[b]).mean() > 0.02, (a, b)


def test_weight_rows_change_the_figure():
    category = IFSCategory.from_maps(SQUARE[:3])  # the Sierpinski triangle
    plain = render_fractals([category], [0, 0], [0, 0], 32, settings=RenderSettings(weight_step=0.0))
    weighted = render_fractals([category], [0, 0], [0, 25 + 1], 32)  # instance 26 uses weight row 1 (a * 0.2)
    assert (plain[0] > 0).mean() > 1.5 * (weighted[1] > 0).mean()  # squeezing x by 0.2 shrinks the figure


def test_flip_codes():
    image = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    flipped = _apply_flips(np.repeat(image, 4, axis=0), np.array([0, 1, 2, 3]))
    assert np.array_equal(flipped[0], image[0]) and np.array_equal(flipped[1], image[0, :, ::-1])
    assert np.array_equal(flipped[2], image[0, ::-1]) and np.array_equal(flipped[3], image[0, ::-1, ::-1])


def test_categories_round_trip_exactly(tmp_path, categories):
    restored = categories_from_dict(json.loads(json.dumps(categories_to_dict(categories))))
    for path in (tmp_path / 'c.json', tmp_path / 'c.npz'):
        for source in (restored, load_categories(save_categories(categories, path))):
            for a, b in zip(categories, source):
                assert np.array_equal(a.maps, b.maps) and np.array_equal(a.probabilities, b.probabilities)
                assert (a.filling_rate, a.candidate) == (b.filling_rate, b.candidate)
    with pytest.raises(ValueError, match='.json or .npz'):
        save_categories(categories, tmp_path / 'c.csv')
    with pytest.raises(FileNotFoundError, match='save_categories'):
        load_categories(tmp_path / 'missing.json')


def test_dataset_items_targets_and_exact_regeneration(tmp_path, categories):
    dataset = FractalImages(num_images=30, image_size=16, seed=2, categories=categories)
    assert len(dataset) == 30 and dataset.num_true_classes == 4 and dataset.targets == [i % 4 for i in range(30)]
    image, category = dataset[5]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and category == 1
    assert torch.equal(image[0], image[2])  # gray
    raw = dataset.images[5, 0].float() / 255
    assert torch.allclose(image[1], (raw - FRACTAL_MEAN[1]) / FRACTAL_STD[1])
    assert dataset.images.shape == (30, 3, 16, 16) and dataset.images.dtype == torch.uint8
    reloaded = FractalImages(num_images=30, image_size=16, seed=2,
                             categories=load_categories(save_categories(categories, tmp_path / 'c.npz')))
    assert torch.equal(reloaded.images, dataset.images)
    assert torch.equal(FractalImages.from_dict(json.loads(json.dumps(dataset.to_dict()))).images, dataset.images)
    prefix = FractalImages(num_images=10, image_size=16, seed=2, categories=categories)
    assert torch.equal(prefix.images, dataset.images[:10])


def test_dataset_searches_its_own_categories(search):
    dataset = FractalImages(2, images_per_category=3, image_size=16, channels=1, seed=0)
    assert len(dataset) == 6 and dataset[0][0].shape == (1, 16, 16)
    assert all(np.array_equal(a.maps, b.maps) for a, b in zip(dataset.categories, search.accepted))


def test_25k_images_at_32px_generate_in_one_go(categories):
    dataset = FractalImages(num_images=25_000, image_size=32, seed=0, categories=categories)
    painted = (dataset.images[:, 0] > 0).float().mean(dim=(1, 2))
    assert len(dataset) == 25_000 and float(painted.min()) > 0.0


def test_bad_arguments_say_what_to_do(categories):
    with pytest.raises(ValueError, match='exactly one of images_per_category and num_images'):
        FractalImages(2, categories=categories)
    with pytest.raises(ValueError, match='positive'):
        FractalImages(num_images=0, categories=categories)
    with pytest.raises(TypeError, match='integer'):
        FractalImages(num_images=2.5, categories=categories)
    with pytest.raises(ValueError, match='one value per channel'):
        FractalImages(num_images=2, channels=1, mean=(0.5, 0.5, 0.5), categories=categories)
    with pytest.raises(ValueError, match='weight_step'):
        RenderSettings(weight_step=0.6)
    with pytest.raises(ValueError, match='min_filling_rate'):
        SearchSettings(min_filling_rate=1.5)
    with pytest.raises(ValueError, match='min_maps'):
        SearchSettings(min_maps=1)
    with pytest.raises(ValueError, match=r'category ids must be in \[0, 4\)'):
        render_fractals(categories, [4], [0])
    with pytest.raises(ValueError, match='image_size=1 is too small.*image_size >= 3'):
        render_fractals(categories, [0], [0], image_size=1)
    with pytest.raises(ValueError, match='one generator per system'):
        filling_rates([categories[0].maps], [])
    with pytest.raises(ValueError, match='non-negative'):
        seeded_generator(-1)


def test_seeded_generators_are_reproducible_and_independent():
    assert seeded_generator(3, 1, 2).random() == seeded_generator(3, 1, 2).random()
    draws = {seeded_generator(*keys).random() for keys in [(3, 1, 2), (3, 2, 1), (4, 1, 2), (3, 1), (3, 12)]}
    assert len(draws) == 5
    assert dataclasses.asdict(RenderSettings())['supersample'] == 2
