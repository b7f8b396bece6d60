"""Tests for nni_labelfree.data.unreal: UnrealNAS's RLRD / RLGD / RLRN datasets and their flipped validation sets."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from nni_labelfree.data import (CIFAR10_MEAN, CIFAR10_STD, PAPER_NUM_CLASSES, UNREAL_KINDS, FractalImages,
                                GaussianNoiseImages, TensorImageDataset, default_num_classes, search_categories,
                                unreal_dataset)


class PilImages(Dataset):
    """``(PIL image, true label)`` like torchvision's CIFAR10 without a transform; image i is filled with i."""

    def __init__(self, size, side=8):
        self.size, self.side = size, side

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        array = np.full((self.side, self.side, 3), index % 256, np.uint8)
        array[:, 0] = 255  # an asymmetric column, so a flip is visible
        return Image.fromarray(array), 7


@pytest.fixture(scope='module')
def fractal_categories():
    return search_categories(2, seed=0).accepted


@pytest.fixture(scope='module')
def real_images():
    generator = torch.Generator().manual_seed(0)
    return TensorImageDataset(torch.randint(0, 256, (120, 3, 8, 8), dtype=torch.uint8, generator=generator),
                              torch.arange(120) % 10, num_true_classes=10)


@pytest.fixture(scope='module')
def datasets(real_images, fractal_categories):
    """``kind -> (train, val)`` at 8 px, 120 images, 12 random classes."""
    options = dict(num_images=120, image_size=8, num_classes=12, seed=3)
    return {'rlrd': unreal_dataset('rlrd', images=real_images, image_size=8, num_classes=12, seed=3),
            'rlgd': unreal_dataset('rlgd', categories=fractal_categories, **options),
            'rlrn': unreal_dataset('rlrn', **options)}


def test_constants_are_the_paper_s():
    assert UNREAL_KINDS == ('rlrd', 'rlgd', 'rlrn')
    assert dict(PAPER_NUM_CLASSES) == {'rlrd': 1000, 'rlgd': 5000, 'rlrn': 5000}


def test_default_class_counts_keep_the_paper_s_images_per_class():
    assert [default_num_classes(kind, 25_000) for kind in UNREAL_KINDS] == [1000, 5000, 5000]
    assert [default_num_classes(kind, 50_000) for kind in UNREAL_KINDS] == [1000, 5000, 5000]
    assert [default_num_classes(kind, 500) for kind in UNREAL_KINDS] == [20, 100, 100]
    assert default_num_classes('rlrd', 10) == 2 and default_num_classes('rlrn', 3) == 2
    train, _ = unreal_dataset('rlrn', num_images=250, image_size=4)
    assert train.num_classes == 50


@pytest.mark.parametrize('kind', UNREAL_KINDS)
def test_items_are_normalised_images_with_labels_in_range(datasets, kind):
    train, val = datasets[kind]
    assert len(train) == len(val) == 120 and train.num_classes == 12
    image, label = train[17]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and type(label) is int
    labels = [train[i][1] for i in range(120)]
    assert min(labels) >= 0 and max(labels) < 12 and len(set(labels)) >= 10
    images, targets = next(iter(DataLoader(train, batch_size=32)))
    assert images.shape == (32, 3, 8, 8) and targets.tolist() == labels[:32]


@pytest.mark.parametrize('kind', UNREAL_KINDS)
def test_validation_is_the_training_set_flipped_with_the_same_labels(datasets, kind):
    train, val = datasets[kind]
    for index in range(len(train)):
        (train_image, train_label), (val_image, val_label) = train[index], val[index]
        assert torch.equal(val_image, train_image.flip(-1)) and val_label == train_label
    assert not torch.equal(val[0][0], train[0][0])  # the flip changes the images


@pytest.mark.parametrize('kind', UNREAL_KINDS)
def test_labels_are_seeded_and_fixed_per_index(datasets, real_images, fractal_categories, kind):
    train, _ = datasets[kind]
    options = dict(num_images=None if kind == 'rlrd' else 120, image_size=8, num_classes=12,
                   images=real_images if kind == 'rlrd' else None,
                   categories=fractal_categories if kind == 'rlgd' else None)
    same, _ = unreal_dataset(kind, seed=3, **options)
    other, _ = unreal_dataset(kind, seed=4, **options)
    assert torch.equal(same.labels, train.labels) and [train[i][1] for i in range(120)] == train.labels.tolist()
    assert (other.labels != train.labels).float().mean() > 0.5


def test_rlrn_is_unnormalised_standard_noise_fixed_per_index(datasets):
    train, _ = datasets['rlrn']
    assert torch.equal(train[5][0], train[5][0]) and not torch.equal(train[5][0], train[6][0])
    assert torch.equal(train[5][0], GaussianNoiseImages(120, (3, 8, 8), seed=3)[5][0])
    pixels = torch.stack([train[i][0] for i in range(120)])
    assert abs(float(pixels.mean())) < 0.05 and abs(float(pixels.std()) - 1) < 0.05


def test_rlgd_renders_the_given_fractal_categories(datasets, fractal_categories):
    train, _ = datasets['rlgd']
    fractals = FractalImages(num_images=120, image_size=8, seed=3, categories=fractal_categories)
    assert torch.equal(train[9][0], fractals[9][0])
    background = float(train[0][0].min())
    assert (train[0][0] == background).float().mean() > 0.05  # a figure on an empty background, not noise


def test_rlgd_searches_categories_when_none_are_given():
    train, val = unreal_dataset('rlgd', num_images=20, image_size=8, channels=1, seed=0)
    assert len(train.base.categories) == 1 and train[0][0].shape == (1, 8, 8) and train.num_classes == 4


def test_rlrd_keeps_float_images_and_ignores_their_labels(datasets, real_images):
    train, _ = datasets['rlrd']
    assert torch.equal(train[4][0], real_images[4][0])
    assert train.labels.tolist() != real_images.targets


def test_rlrd_subset_is_seeded(real_images):
    first, _ = unreal_dataset('rlrd', images=real_images, num_images=30, image_size=8, num_classes=3, seed=1)
    second, _ = unreal_dataset('rlrd', images=real_images, num_images=30, image_size=8, num_classes=3, seed=1)
    assert len(first) == 30 and torch.equal(torch.stack([first[i][0] for i in range(30)]),
                                            torch.stack([second[i][0] for i in range(30)]))


def test_rlrd_normalises_pil_and_uint8_images_with_cifar_statistics():
    train, val = unreal_dataset('rlrd', images=PilImages(10), image_size=8, num_classes=2)
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    raw = torch.full((3, 8, 8), 4 / 255)
    raw[:, :, 0] = 1.0
    assert torch.allclose(train[4][0], (raw - mean) / std) and torch.equal(val[4][0], train[4][0].flip(-1))
    uint8 = [torch.full((3, 8, 8), 4, dtype=torch.uint8)] * 3
    train, _ = unreal_dataset('rlrd', images=uint8, image_size=8, num_classes=2)
    assert torch.allclose(train[1][0], (torch.full((3, 8, 8), 4 / 255) - mean) / std)


def test_bad_input_gets_one_clear_error(real_images):
    with pytest.raises(ValueError, match=r"unknown unreal data kind 'rl'.*'rlrd', 'rlgd', 'rlrn'"):
        unreal_dataset('rl')
    with pytest.raises(ValueError, match='pass images='):
        unreal_dataset('rlrd')
    with pytest.raises(ValueError, match=r'num_classes=200 is larger than the number of images \(120\).*<= 120'):
        unreal_dataset('rlrd', images=real_images, image_size=8, num_classes=200)
    with pytest.raises(ValueError, match='larger than the number of images'):
        unreal_dataset('rlrn', num_images=10, image_size=8, num_classes=11)
    with pytest.raises(ValueError, match='at least 2'):
        unreal_dataset('rlrn', num_images=10, image_size=8, num_classes=1)
    with pytest.raises(ValueError, match='image_size must be a positive integer'):
        unreal_dataset('rlrn', num_images=10, image_size=0)
    with pytest.raises(ValueError, match='num_images must be a positive integer'):
        unreal_dataset('rlrn', num_images=-5)
    with pytest.raises(TypeError, match='channels must be an integer'):
        unreal_dataset('rlrn', num_images=10, channels='3')
    with pytest.raises(ValueError, match='pass channels=3, image_size=8'):
        unreal_dataset('rlrd', images=real_images, num_classes=2)
    with pytest.raises(TypeError, match='tensors'):
        unreal_dataset('rlrd', images=[np.zeros((3, 8, 8))], image_size=8, num_classes=2)
    with pytest.raises(ValueError, match="kind='rlgd' only"):
        unreal_dataset('rlrn', num_images=10, categories=[])
