"""Pi-NAS's augmented views: the batched ops against torchvision, determinism per (seed, epoch, index), statistics."""
import random

import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from nni_labelfree.data import CIFAR10_MEAN, TensorImageDataset
from nni_labelfree.data.views import (ViewConfig, ViewDataset, ViewParams, augment_views, sample_view_params,
                                      view_rng)
from nni_labelfree.data import views as V

NO_AUGMENTATION = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_prob=0.0, grayscale_prob=0.0,
                             blur_prob=0.0, flip_prob=0.0)


def _images(n=8, size=32, labels=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return TensorImageDataset(images, torch.arange(n) % 3 if labels else None, num_true_classes=3 if labels else None)


class BareImages(Dataset):
    """Bare images in [0, 1] (no label, no normalisation)."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(index))


def _params(n, **overrides):
    base = dict(crop=torch.tensor([[0.0, 0.0, 32.0, 32.0]] * n), flip=torch.zeros(n, dtype=torch.bool),
                jitter=torch.zeros(n, dtype=torch.bool), factors=torch.ones(n, 4), order=torch.arange(4).repeat(n, 1),
                gray=torch.zeros(n, dtype=torch.bool), blur=torch.zeros(n, dtype=torch.bool), sigma=torch.ones(n))
    base.update(overrides)
    return ViewParams(**base)


@pytest.mark.parametrize('op, reference, factor', [
    (V.BRIGHTNESS, TF.adjust_brightness, 1.3), (V.CONTRAST, TF.adjust_contrast, 0.7),
    (V.SATURATION, TF.adjust_saturation, 1.4), (V.HUE, TF.adjust_hue, 0.35), (V.HUE, TF.adjust_hue, -0.4)])
def test_colour_ops_match_torchvision(op, reference, factor):
    images = torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    images[0, :, :4] = 0.5  # grey pixels: hue undefined, must stay grey
    ours = V._jitter_op(op, images, torch.full((5,), factor))
    theirs = torch.stack([reference(image, factor) for image in images])
    assert torch.allclose(ours, theirs, atol=2e-6)


def test_blur_flip_grayscale_and_full_crop_match_torchvision():
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    blurred = V._gaussian_blur(images, torch.tensor([0.3, 1.0, 2.0]), 3)
    for k, sigma in enumerate((0.3, 1.0, 2.0)):
        assert torch.allclose(blurred[k], TF.gaussian_blur(images[k], [3, 3], [sigma, sigma]), atol=1e-6)
    flipped = augment_views(images, _params(3, flip=torch.tensor([True, False, True])), ViewConfig())
    assert torch.allclose(flipped[0], TF.hflip(images[0]), atol=1e-6)
    assert torch.allclose(flipped[1], images[1], atol=1e-6)
    gray = augment_views(images, _params(3, gray=torch.tensor([True, True, False])), ViewConfig())
    assert torch.allclose(gray[0], TF.rgb_to_grayscale(images[0], 3), atol=1e-6)
    assert torch.equal(gray[0][0], gray[0][1])


def test_crop_box_is_resampled_to_the_output_size():
    """The left half, stretched 2x: output column 9 samples source x = 4.75 (3/4 of column 4, 1/4 of column 5)."""
    image = torch.arange(32.0).repeat(3, 32, 1).unsqueeze(0) / 32  # value = column / 32
    out = augment_views(image, _params(1, crop=torch.tensor([[0.0, 0.0, 32.0, 16.0]])), ViewConfig())
    assert out.shape == (1, 3, 32, 32)
    assert torch.allclose(out[0, 0, 5, 9], torch.tensor(4.25 / 32), atol=1e-6)
    assert float(out.max()) <= 16 / 32  # nothing right of the crop is visible


def test_identity_config_returns_the_image():
    data = _images(4)
    views, label = ViewDataset(data, 2, config=NO_AUGMENTATION)[1]
    assert views.shape == (2, 3, 32, 32) and label == 1
    assert torch.allclose(views[0], data[1][0], atol=1e-5) and torch.allclose(views[1], data[1][0], atol=1e-5)


def test_views_are_deterministic_per_seed_epoch_and_index():
    data = _images(8)
    dataset = ViewDataset(data, 2, seed=3)
    first = dataset[5][0]
    assert torch.equal(first, ViewDataset(data, 2, seed=3)[5][0])
    assert not torch.allclose(first[0], first[1])  # the two views differ
    batch = dataset.__getitems__([7, 5, 0])
    assert torch.allclose(batch[1][0], first, atol=1e-6)  # same item, whatever the batch around it
    assert not torch.allclose(ViewDataset(data, 2, seed=4)[5][0], first)
    dataset.set_epoch(1)
    assert dataset.epoch == 1 and not torch.allclose(dataset[5][0], first)
    dataset.set_epoch(0)
    assert torch.equal(dataset[5][0], first)


def test_a_dataloader_batches_views_and_passes_labels_through():
    dataset = ViewDataset(_images(8), num_views=4, seed=0)
    views, labels = next(iter(DataLoader(dataset, batch_size=4)))
    assert views.shape == (4, 4, 3, 32, 32) and labels.tolist() == [0, 1, 2, 0]
    assert torch.isfinite(views).all()
    unlabeled = ViewDataset(_images(4, labels=False))
    assert unlabeled[0][1] == -1


def test_bare_images_in_unit_range_and_uint8_images():
    views, label = ViewDataset(BareImages(), 2, mean=None, std=None)[2]
    assert label == -1 and views.shape == (2, 3, 16, 16) and 0.0 <= float(views.min()) and float(views.max()) <= 1.0

    class Uint8(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return torch.full((3, 8, 8), 255, dtype=torch.uint8), 7
    views, label = ViewDataset(Uint8(), 2, config=NO_AUGMENTATION, mean=None, std=None)[0]
    assert label == 7 and torch.allclose(views, torch.ones_like(views))


def test_parameter_statistics_follow_the_config():
    config = ViewConfig()
    rows = sample_view_params(random.Random(0), 4000, 32, 32, config)
    for flags, probability in ((rows.jitter, 0.8), (rows.gray, 0.2), (rows.blur, 0.5), (rows.flip, 0.5)):
        assert abs(flags.float().mean().item() - probability) < 0.03
    area = rows.crop[:, 2] * rows.crop[:, 3] / (32 * 32)
    assert area.min() >= 0.15 and area.max() <= 1.0 and 0.5 < area.mean() < 0.7
    assert (rows.crop[:, 0] + rows.crop[:, 2] <= 32).all() and (rows.crop[:, 1] + rows.crop[:, 3] <= 32).all()
    assert rows.factors[:, 3].abs().max() <= 0.4 and rows.factors[:, :3].min() >= 0.6
    assert sorted(rows.order[0].tolist()) == [0, 1, 2, 3] and len({tuple(o) for o in rows.order.tolist()}) == 24
    assert rows.sigma.min() >= 0.1 and rows.sigma.max() <= 2.0


def test_presets_and_scaling():
    assert ViewConfig().kernel_size == 3 and ViewConfig(size=224).kernel_size == 23
    linear = ViewConfig.linear_eval(32)
    assert linear.jitter_prob == linear.grayscale_prob == linear.blur_prob == 0.0 and linear.flip_prob == 0.5
    assert ViewConfig.pinas(16).size == 16 and ViewConfig().hue == 0.4
    dataset = ViewDataset(_images(4, size=16), config=ViewConfig(size=24))
    assert dataset[0][0].shape == (2, 3, 24, 24)
    assert view_rng(0, 0, 1).random() != view_rng(0, 1, 0).random()


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(num_views=0), ValueError, 'num_views'),
    (dict(mean=CIFAR10_MEAN, std=None), ValueError, 'both mean and std'),
    (dict(mean=(0.5,), std=(0.5,)), ValueError, 'per-channel'),
    (dict(seed=-1), ValueError, 'seed'),
])
def test_bad_dataset_arguments_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        ViewDataset(_images(2), **kwargs)


@pytest.mark.parametrize('kwargs, message', [
    (dict(size=0), 'size'), (dict(crop_scale=(0.5, 0.2)), 'crop_scale'), (dict(crop_scale=(0.2, 1.5)), 'at most 1'),
    (dict(jitter_prob=1.5), 'jitter_prob'), (dict(hue=0.7), 'hue'), (dict(blur_kernel=4), 'odd'),
])
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViewConfig(**kwargs)


def test_bad_images_are_refused():
    class Flat(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return torch.zeros(10), 0
    with pytest.raises(ValueError, match=r'images \[C, H, W\]'):
        ViewDataset(Flat())
    with pytest.raises(ValueError, match='rows of view parameters'):
        augment_views(torch.rand(2, 3, 8, 8), _params(3), ViewConfig())
    with pytest.raises(IndexError):
        ViewDataset(_images(2))[5]
