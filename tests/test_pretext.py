"""Tests for the UnNAS pretext label sources: rotation, colorization (Lab, 313 ab bins) and jigsaw."""
import itertools
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from nni_labelfree.data import (CIFAR10_MEAN, CIFAR10_STD, PRETEXT_TASKS, ColorizationDataset, JigsawDataset,
                                RotationDataset, TensorImageDataset, ab_bins, bin_to_ab, hamming_permutations,
                                image_source, lab_to_rgb, list_pretext_tasks, pretext_dataset, pretext_task,
                                quantize_ab, rgb_to_lab, rotation_collate, shuffle_tiles, unshuffle)

MEAN = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
STD = torch.tensor(CIFAR10_STD).view(3, 1, 1)


class BareImages(Dataset):
    """Items are bare images (no label); image i comes from a generator seeded with i."""

    def __init__(self, size=6, shape=(3, 32, 32)):
        self.size, self.shape = size, shape

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return torch.rand(self.shape, generator=torch.Generator().manual_seed(index)) * 2 - 1


class Items(Dataset):
    """``(item, -1)`` for a fixed list of items, to feed arbitrary (bad) images."""

    def __init__(self, items):
        self.items = list(items)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index], -1


def _rgb_images(count=6, size=32, seed=0):
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    return TensorImageDataset(images)


def _normalised(rgb):
    return (rgb - MEAN) / STD


# ---------------------------------------------------------------- registry and metadata

def test_task_names_and_unknown_task_lists_the_valid_ones():
    assert list_pretext_tasks() == list(PRETEXT_TASKS) == ['rotation', 'colorization', 'jigsaw']
    with pytest.raises(ValueError, match=r"unknown pretext task 'rotate'.*'rotation', 'colorization', 'jigsaw'"):
        pretext_dataset('rotate', _rgb_images())
    with pytest.raises(ValueError, match='unknown pretext task'):
        pretext_task('inpainting')


def test_pretext_task_metadata():
    rotation, colorization = pretext_task('rotation'), pretext_task('colorization')
    assert (rotation.num_classes, rotation.collate_fn, rotation.inputs_per_image) == (4, rotation_collate, 4)
    assert (colorization.num_classes, colorization.collate_fn) == (313, default_collate)
    assert colorization.input_channels == 1 and colorization.per_pixel and not rotation.per_pixel
    assert pretext_task('jigsaw', grid=2).num_classes == 24 and pretext_task('jigsaw', grid=3).num_classes == 100
    assert pretext_task('jigsaw', grid=3, num_permutations=1000).num_classes == 1000
    assert 'Linear(C*9, 100)' in pretext_task('jigsaw', grid=3).head
    with pytest.raises(ValueError, match='Pass grid='):
        pretext_task('jigsaw')
    with pytest.raises(ValueError, match='jigsaw task only'):
        pretext_task('rotation', grid=2)


@pytest.mark.parametrize('task', PRETEXT_TASKS)
def test_every_dataset_carries_its_metadata_and_accepts_bare_images(task):
    dataset = pretext_dataset(task, BareImages(), seed=3)
    assert dataset.task.name == task and dataset.num_classes == dataset.task.num_classes
    assert dataset.collate_fn is dataset.task.collate_fn
    loader = DataLoader(dataset, batch_size=3, collate_fn=dataset.collate_fn)
    inputs, targets = next(iter(loader))
    assert int(targets.min()) >= 0 and int(targets.max()) < dataset.num_classes


def test_pretext_dataset_names_accepted_arguments_on_a_typo():
    with pytest.raises(TypeError, match='grid, num_permutations, seed, permutation_seed, jitter'):
        pretext_dataset('jigsaw', _rgb_images(), grids=2)


# ---------------------------------------------------------------- rotation

def test_rotation_item_shapes_labels_and_counter_clockwise_convention():
    image = torch.zeros(3, 8, 8)
    image[:, 0, 7] = 1.0  # top-right pixel
    images, labels = RotationDataset(Items([image]))[0]
    assert images.shape == (4, 3, 8, 8) and labels.tolist() == [0, 1, 2, 3] and labels.dtype == torch.int64
    assert torch.equal(images[0], image)
    assert images[1][0, 0, 0] == 1.0  # counter-clockwise: top-right goes to top-left
    assert images[2][0, 7, 0] == 1.0 and images[3][0, 7, 7] == 1.0
    for k in range(4):
        assert np.array_equal(images[k].numpy(), np.rot90(image.numpy(), k, axes=(1, 2)))


def test_rotating_back_recovers_the_image_and_items_are_deterministic():
    base = _rgb_images(4)
    dataset = RotationDataset(base, seed=5)
    for index in range(4):
        images, _ = dataset[index]
        for k in range(4):
            assert torch.equal(torch.rot90(images[k], -k, dims=(1, 2)), base[index][0])
        assert torch.equal(images, dataset[index][0])


def test_rotation_collate_flattens_image_major_and_batch_grows_four_times():
    dataset = RotationDataset(_rgb_images(5))
    images, labels = next(iter(DataLoader(dataset, batch_size=3, collate_fn=dataset.collate_fn)))
    assert images.shape == (12, 3, 32, 32) and labels.tolist() == [0, 1, 2, 3] * 3
    for i in range(3):
        assert torch.equal(images[4 * i:4 * i + 4], dataset[i][0])


def test_rotation_bad_inputs():
    with pytest.raises(ValueError, match='needs square images, got 8x6'):
        RotationDataset(Items([torch.zeros(3, 8, 6)]))
    with pytest.raises(ValueError, match='spatial images'):
        RotationDataset(Items([torch.zeros(3)]))
    with pytest.raises(TypeError, match='ToTensor'):
        RotationDataset(Items([np.zeros((3, 8, 8), dtype=np.float32)]))
    with pytest.raises(ValueError, match='rotation_collate expects'):
        rotation_collate([(torch.zeros(3, 8, 8), 1)])


# ---------------------------------------------------------------- Lab conversion

@pytest.mark.parametrize('rgb, lab', [
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20)),
    ((0.0, 1.0, 0.0), (87.73, -86.18, 83.18)),
    ((0.0, 0.0, 1.0), (32.30, 79.19, -107.86)),
])
def test_lab_of_known_colours(rgb, lab):
    assert np.allclose(rgb_to_lab(torch.tensor(rgb)).numpy(), lab, atol=0.01)


def test_rgb_lab_round_trip_in_both_precisions_and_layouts():
    rgb = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lab = rgb_to_lab(rgb, channel_dim=1)
    assert lab.shape == rgb.shape and float(lab[:, 0].min()) >= 0 and float(lab[:, 0].max()) <= 100
    assert torch.allclose(lab_to_rgb(lab, channel_dim=1), rgb, atol=1e-9)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb.float(), channel_dim=1), channel_dim=1), rgb.float(), atol=1e-4)
    channels_last = rgb.permute(0, 2, 3, 1).numpy()
    back = lab_to_rgb(rgb_to_lab(channels_last, channel_dim=-1), channel_dim=-1)
    assert isinstance(back, np.ndarray) and np.allclose(back, channels_last, atol=1e-9)


def test_lab_conversion_rejects_integer_input_and_wrong_channels():
    with pytest.raises(TypeError, match='255'):
        rgb_to_lab(torch.zeros(3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match='3 channels along dim 0'):
        rgb_to_lab(torch.zeros(4, 2, 2))


def test_out_of_gamut_lab_leaves_the_unit_cube_unless_clipped():
    lab = torch.tensor([50.0, -100.0, -100.0])
    assert float(lab_to_rgb(lab, clip=False).min()) < 0.0
    clipped = lab_to_rgb(lab)
    assert float(clipped.min()) >= 0.0 and float(clipped.max()) <= 1.0


# ---------------------------------------------------------------- the 313 ab bins and the quantiser

def test_ab_bins_are_313_unique_points_of_the_step_10_grid():
    bins = ab_bins()
    assert bins.shape == (313, 2) and len(np.unique(bins, axis=0)) == 313
    assert np.all(bins % 10 == 0) and bins.min() >= -110 and bins.max() <= 100
    assert bins[:2].tolist() == [[-90, 50], [-90, 60]]  # the first rows of Zhang et al.'s pts_in_hull.npy
    assert [tuple(b) for b in bins] == sorted(tuple(b) for b in bins)  # a-major order
    assert [0, 0] in bins.tolist() and [80, 70] in bins.tolist() and [-110, -110] not in bins.tolist()
    bins[0] = 12345  # a copy: the cached table is not mutated
    assert ab_bins()[0].tolist() == [-90, 50]


def test_every_srgb_colour_falls_in_a_kept_bin():
    rgb = torch.rand(20000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    ab = rgb_to_lab(torch.cat([rgb, corners]), channel_dim=-1)[:, 1:].numpy()
    nearest_grid_point = np.round(ab / 10) * 10
    kept = {tuple(b) for b in ab_bins()}
    assert all(tuple(point) in kept for point in nearest_grid_point)


@pytest.mark.parametrize('ab, centre', [((0.0, 0.0), (0, 0)), ((3.0, -4.0), (0, 0)), ((16.0, 24.0), (20, 20)),
                                        ((80.09, 67.20), (80, 70)), ((-86.18, 83.18), (-90, 80)),
                                        ((104.0, 0.0), (100, 0)), ((-200.0, -200.0), None)])
def test_quantize_ab_maps_known_values_to_the_nearest_bin(ab, centre):
    bins = ab_bins()
    index = int(quantize_ab(torch.tensor(ab)))
    if centre is None:  # far out of gamut: the nearest kept bin, found by brute force
        centre = tuple(bins[np.argmin(((bins - np.array(ab)) ** 2).sum(1))])
    assert tuple(bins[index]) == centre


def test_quantize_ab_equals_brute_force_nearest_neighbour_in_and_out_of_gamut():
    ab = torch.empty(2, 50, 40, dtype=torch.float64).uniform_(-130, 130, generator=torch.Generator().manual_seed(2))
    indices = quantize_ab(ab)
    bins = torch.from_numpy(ab_bins())
    brute = torch.cdist(ab.reshape(2, -1).T, bins).argmin(1).reshape(50, 40)
    assert indices.shape == (50, 40) and indices.dtype == torch.int64 and torch.equal(indices, brute)


def test_bin_to_ab_inverts_quantize_ab_on_the_bin_centres():
    centres = torch.from_numpy(ab_bins()).T  # [2, 313]
    assert torch.equal(quantize_ab(centres), torch.arange(313))
    assert torch.equal(bin_to_ab(torch.arange(313)), centres.float())
    assert bin_to_ab(np.array([[0, 312]])).shape == (2, 1, 2)
    with pytest.raises(IndexError, match='313'):
        bin_to_ab(torch.tensor([313]))
    with pytest.raises(ValueError, match='NaN'):
        quantize_ab(torch.tensor([float('nan'), 0.0]))


# ---------------------------------------------------------------- colorization dataset

def test_colorization_item_shapes_ranges_and_determinism():
    dataset = ColorizationDataset(_rgb_images(3))
    lightness, target = dataset[1]
    assert lightness.shape == (1, 32, 32) and lightness.dtype == torch.float32
    assert target.shape == (32, 32) and target.dtype == torch.int64
    assert int(target.min()) >= 0 and int(target.max()) < 313 and len(target.unique()) > 20
    again = dataset[1]
    assert torch.equal(lightness, again[0]) and torch.equal(target, again[1])


@pytest.mark.parametrize('colour', [(1.0, 0.0, 0.0), (0.2, 0.6, 0.3), (0.5, 0.5, 0.5)])
def test_colorization_of_a_solid_colour_is_constant_and_equals_its_bin(colour):
    rgb = torch.tensor(colour).view(3, 1, 1).expand(3, 8, 8)
    dataset = ColorizationDataset(Items([_normalised(rgb)]))
    lightness, target = dataset[0]
    lab = rgb_to_lab(torch.tensor(colour))
    assert torch.all(target == int(quantize_ab(lab[1:])))
    expected_l = (float(lab[0]) / 100 - np.mean(CIFAR10_MEAN)) / np.mean(CIFAR10_STD)
    assert torch.allclose(lightness, torch.full((1, 8, 8), expected_l), atol=1e-4)
    decoded_lab = rgb_to_lab(dataset.decode(lightness, target)[:, 0, 0])
    assert abs(float(decoded_lab[0] - lab[0])) < 1.0  # same lightness; ab moved to the bin centre, <= 5*sqrt(2)
    assert float((decoded_lab[1:] - lab[1:]).norm()) < 7.5


def test_colorization_bad_inputs():
    with pytest.raises(ValueError, match=r'colorization needs RGB images \[3, H, W\], got 1 channel'):
        ColorizationDataset(Items([torch.zeros(1, 8, 8)]))
    with pytest.raises(ValueError, match='spatial images'):
        ColorizationDataset(Items([torch.zeros(3)]))
    with pytest.raises(ValueError, match='mean and std'):
        ColorizationDataset(_rgb_images(1), std=(0.2, 0.2, 0.0))


def test_colorization_warns_when_mean_std_do_not_match_the_base(caplog):
    with caplog.at_level(logging.WARNING, logger='nni_labelfree.data.pretext_colorization'):
        dataset = ColorizationDataset(Items([torch.full((3, 4, 4), 5.0)]))
        dataset[0]
    assert sum('outside [0, 1]' in record.getMessage() for record in caplog.records) == 1


# ---------------------------------------------------------------- jigsaw

def test_hamming_permutations_are_unique_far_apart_and_seeded():
    perms = hamming_permutations(9, 30, seed=0)
    assert perms.shape == (30, 9) and perms.dtype == np.int64 and len(np.unique(perms, axis=0)) == 30
    assert all(sorted(row) == list(range(9)) for row in perms.tolist())
    distances = (perms[:, None] != perms[None]).sum(-1)[~np.eye(30, dtype=bool)]
    assert distances.min() >= 6  # greedy max-min; 30 random permutations of 9 give 2 to 4
    assert np.array_equal(perms, hamming_permutations(9, 30, seed=0))
    assert not np.array_equal(perms, hamming_permutations(9, 30, seed=1))
    with pytest.raises(ValueError, match='only 24 permutations'):
        hamming_permutations(4, 25)
    with pytest.raises(ValueError, match='only 362880 permutations'):
        hamming_permutations(9, 362881)


def test_shuffle_and_unshuffle_follow_the_slot_convention_and_invert_each_other():
    tiles = torch.arange(4).view(4, 1).float()
    perm = torch.tensor([2, 0, 3, 1])
    shuffled = shuffle_tiles(tiles, perm)
    assert shuffled.flatten().tolist() == [1, 3, 0, 2]  # tile k lands in slot perm[k]
    assert torch.equal(unshuffle(shuffled, perm), tiles)
    batch = torch.randn(2, 9, 3, 4, 4)
    perms = torch.stack([torch.randperm(9, generator=torch.Generator().manual_seed(s)) for s in range(2)])
    assert torch.equal(unshuffle(shuffle_tiles(batch, perms), perms), batch)
    assert torch.equal(unshuffle(batch, perms)[1], unshuffle(batch[1], perms[1]))
    with pytest.raises(ValueError, match='permutation of range'):
        unshuffle(tiles, torch.tensor([0, 0, 1, 2]))


def test_jigsaw_small_images_use_a_2x2_grid_with_all_24_permutations():
    dataset = JigsawDataset(_rgb_images(8, size=32))
    assert dataset.grid == 2 and dataset.num_classes == 24 and dataset.task.inputs_per_image == 4
    assert dataset.permutations.tolist() == [list(p) for p in itertools.permutations(range(4))]
    tiles, label = dataset[0]
    assert tiles.shape == (4, 3, 12, 12) and 0 <= label < 24  # patch 16, tile int(0.76 * 16) = 12
    flat = tiles.flatten(1)
    assert torch.allclose(flat.mean(1), torch.zeros(4), atol=1e-5)  # each tile normalised by its own stats
    assert torch.allclose(flat.std(1, correction=0), torch.ones(4), atol=1e-4)


def test_jigsaw_large_images_use_a_3x3_grid_with_a_hamming_set():
    dataset = JigsawDataset(BareImages(3, shape=(3, 64, 64)), num_permutations=20, permutation_seed=4)
    assert dataset.grid == 3 and dataset.num_classes == 20 and dataset.task.num_classes == 20
    assert torch.equal(dataset.permutations, torch.from_numpy(hamming_permutations(9, 20, seed=4)))
    tiles, label = dataset[2]
    assert tiles.shape == (9, 3, 15, 15) and 0 <= label < 20  # patch 21, tile 15


def test_jigsaw_items_are_deterministic_per_seed_index_and_epoch():
    base = _rgb_images(8)
    first, second, other = JigsawDataset(base, seed=1), JigsawDataset(base, seed=1), JigsawDataset(base, seed=2)
    items = [first[i] for i in range(8)]
    assert len({label for _, label in items}) > 1  # drawn per index, not once per dataset
    for i, (tiles, label) in enumerate(items):
        assert torch.equal(tiles, second[i][0]) and label == second[i][1]
    assert [label for _, label in items] != [other[i][1] for i in range(8)]
    first.set_epoch(1)
    assert [first[i][1] for i in range(8)] != [label for _, label in items]
    first.set_epoch(0)
    assert all(torch.equal(first[i][0], items[i][0]) for i in range(8))


def _normalised_tile(image, top, left, tile):
    crop = image[:, top:top + tile, left:left + tile]
    return (crop - crop.mean()) / crop.std(correction=0)


def test_unshuffle_recovers_the_centred_tiles_in_grid_order_without_jitter():
    base = BareImages(4, shape=(3, 72, 72))
    dataset = JigsawDataset(base, grid=3, num_permutations=12, jitter=False)
    patch, tile = 24, 18
    for index in range(4):
        tiles, label = dataset[index]
        expected = torch.stack([_normalised_tile(base[index], r * patch + 3, c * patch + 3, tile)
                                for r in range(3) for c in range(3)])
        perm = dataset.permutations[label]
        assert torch.allclose(unshuffle(tiles, perm), expected, atol=1e-5)
        assert torch.allclose(tiles[perm], expected, atol=1e-5)  # tile k sits in slot perm[k]


def test_jittered_tiles_are_crops_inside_their_own_patch():
    base = BareImages(3, shape=(3, 32, 32))
    dataset = JigsawDataset(base, seed=7)
    offsets = set()
    for index in range(3):
        tiles, label = dataset[index]
        ordered = unshuffle(tiles, dataset.permutations[label])
        for k in range(4):
            row, col = divmod(k, 2)
            found = [(dy, dx) for dy in range(5) for dx in range(5)
                     if torch.allclose(_normalised_tile(base[index], row * 16 + dy, col * 16 + dx, 12), ordered[k],
                                       atol=1e-5)]
            assert len(found) == 1
            offsets.add(found[0])
    assert len(offsets) > 3  # offsets really vary


def test_jigsaw_bad_inputs():
    with pytest.raises(ValueError, match=r'too small for a 3x3 jigsaw: tiles would be 3 px.*at least 18 px'):
        JigsawDataset(_rgb_images(1, size=16), grid=3)
    with pytest.raises(ValueError, match='too small for a 2x2 jigsaw'):
        JigsawDataset(_rgb_images(1, size=10))
    with pytest.raises(ValueError, match='only 24 permutations'):
        JigsawDataset(_rgb_images(1), grid=2, num_permutations=25)
    with pytest.raises(ValueError, match=r'grid must be one of \[2, 3\]'):
        JigsawDataset(_rgb_images(1), grid=4)
    with pytest.raises(ValueError, match='empty'):
        JigsawDataset(Items([]))


# ---------------------------------------------------------------- real images

@pytest.fixture
def cifar_jpegs(shared_data):
    archive = shared_data / 'images' / 'cifar10_jpeg.tar.gz'
    if not archive.is_file():
        pytest.skip(f'the CIFAR-10 JPEG archive {archive} is absent')
    return image_source('imagefolder', root=archive, split='train', num_images=64)


@pytest.mark.parametrize('task, input_shape, target_shape', [
    ('rotation', (32, 3, 32, 32), (32,)),
    ('colorization', (8, 1, 32, 32), (8, 32, 32)),
    ('jigsaw', (8, 4, 3, 12, 12), (8,)),
])
def test_pretext_tasks_on_cifar_jpegs(cifar_jpegs, task, input_shape, target_shape):
    dataset = pretext_dataset(task, cifar_jpegs, seed=0)
    loader = DataLoader(dataset, batch_size=8, shuffle=False, collate_fn=dataset.collate_fn)
    inputs, targets = next(iter(loader))
    assert inputs.shape == input_shape and targets.shape == target_shape
    assert torch.isfinite(inputs).all() and int(targets.max()) < dataset.num_classes
    if task == 'colorization':
        assert len(targets.unique()) > 30  # natural images spread over many ab bins
