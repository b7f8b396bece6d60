"""CropFlipDataset: CIFAR-style pad/crop/flip before UnNAS's pretext transform, a pure function of (seed, epoch, index)."""
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from nni_labelfree.data import (
    CropFlipDataset,
    CropFlipParams,
    crop_and_flip,
    pretext_dataset,
)


def _images(n=24, channels=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=g)


class BareImages(Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


def _shifted_window(image, padding, top, left):
    """Independent reference: the window built by hand from a zero canvas, not with F.pad."""
    channels, height, width = image.shape
    canvas = torch.zeros(channels, height + 2 * padding, width + 2 * padding)
    canvas[:, padding:padding + height, padding:padding + width] = image
    return canvas[:, top:top + height, left:left + width]


def test_items_are_a_pure_function_of_seed_epoch_and_index():
    images = _images()
    first = CropFlipDataset(TensorDataset(images, torch.arange(24)), seed=3)
    second = CropFlipDataset(TensorDataset(images, torch.arange(24)), seed=3)
    forward = [first[i][0] for i in range(24)]
    backward = {i: second[i][0] for i in reversed(range(24))}
    assert all(torch.equal(forward[i], backward[i]) for i in range(24))
    assert torch.equal(first[-1][0], forward[23])
    first.set_epoch(5)
    again = [first[i][0] for i in range(24)]
    first.set_epoch(0)
    assert all(torch.equal(first[i][0], forward[i]) for i in range(24))  # back at epoch 0: the same crops
    second.set_epoch(5)
    assert all(torch.equal(second[i][0], again[i]) for i in range(24))
    # A DataLoader with workers sees the same items as the main process.
    loader = DataLoader(first, batch_size=8, num_workers=2, shuffle=False)
    batched = torch.cat([batch[0] for batch in loader])
    assert torch.equal(batched, torch.stack(forward))


def test_epochs_and_seeds_draw_other_crops():
    dataset = CropFlipDataset(BareImages(_images()), seed=0)
    epoch0 = [dataset.params(i, 16, 16) for i in range(24)]
    dataset.set_epoch(1)
    epoch1 = [dataset.params(i, 16, 16) for i in range(24)]
    other_seed = [CropFlipDataset(BareImages(_images()), seed=1).params(i, 16, 16) for i in range(24)]
    assert sum(a != b for a, b in zip(epoch0, epoch1)) >= 12
    assert sum(a != b for a, b in zip(epoch0, other_seed)) >= 12
    tops = {p.top for p in epoch0 + epoch1}
    assert tops <= set(range(5)) and len(tops) >= 3  # 16 px: padding 2, offsets 0..4
    flips = [p.flip for p in epoch0 + epoch1]
    assert 10 <= sum(flips) <= 38  # about half of 48


def test_crop_is_a_shifted_window_of_the_zero_padded_image_and_flip_mirrors_it():
    images = _images(n=40, size=32)
    dataset = CropFlipDataset(BareImages(images), seed=7)  # default padding: 32 // 8 = 4
    seen_flip = seen_plain = 0
    for index in range(40):
        params = dataset.params(index, 32, 32)
        window = _shifted_window(images[index], 4, params.top, params.left)
        expected = torch.flip(window, dims=(-1,)) if params.flip else window
        assert torch.equal(dataset[index], expected), index
        seen_flip += params.flip
        seen_plain += not params.flip
    assert seen_flip and seen_plain
    # Fully inside: the centre crop unflipped is the image itself; a corner shift leaves a zero border.
    image = images[0]
    assert torch.equal(crop_and_flip(image, CropFlipParams(4, 4, False), 4), image)
    corner = crop_and_flip(image, CropFlipParams(0, 0, False), 4)
    assert torch.all(corner[:, :4] == 0) and torch.all(corner[:, :, :4] == 0)
    assert torch.equal(corner[:, 4:, 4:], image[:, :28, :28])
    assert torch.equal(crop_and_flip(image, CropFlipParams(4, 4, True), 4), image.flip(-1))


def test_flip_false_keeps_the_crops_and_padding_zero_only_flips():
    images = _images()
    flipping = CropFlipDataset(BareImages(images), seed=2)
    no_flip = CropFlipDataset(BareImages(images), seed=2, flip=False)
    for index in range(24):
        params = flipping.params(index, 16, 16)
        assert no_flip.params(index, 16, 16) == params._replace(flip=False)
        assert torch.equal(no_flip[index], _shifted_window(images[index], 2, params.top, params.left))
    flip_only = CropFlipDataset(BareImages(images), seed=2, padding=0)
    outputs = [flip_only[i] for i in range(24)]
    assert all(torch.equal(out, images[i]) or torch.equal(out, images[i].flip(-1)) for i, out in enumerate(outputs))
    assert any(not torch.equal(out, images[i]) for i, out in enumerate(outputs))
    wide = CropFlipDataset(BareImages(images), seed=2, padding=6)
    assert max(wide.params(i, 16, 16).top for i in range(24)) > 4  # explicit padding widens the offsets


def test_labels_and_the_rest_of_the_item_pass_through():
    images = _images()
    labels = torch.arange(24) * 3
    extra = torch.arange(24) + 100
    dataset = CropFlipDataset(TensorDataset(images, labels, extra), seed=0)
    for index in (0, 5, 23):
        image, label, other = dataset[index]
        assert int(label) == 3 * index and int(other) == 100 + index and image.shape == (3, 16, 16)

    class ListItems(BareImages):
        num_true_classes = 7

        def __getitem__(self, index):
            return [self.images[index], index, 'meta']

    wrapped = CropFlipDataset(ListItems(images), seed=0)
    item = wrapped[4]
    assert isinstance(item, list) and item[1:] == [4, 'meta'] and wrapped.num_true_classes == 7
    assert torch.is_tensor(CropFlipDataset(BareImages(images))[0])


def test_pretext_tasks_read_the_augmented_image():
    images = _images(n=8, size=16)
    augmented = CropFlipDataset(BareImages(images), seed=4)
    rotation = pretext_dataset('rotation', augmented, seed=0)
    moved = [i for i in range(8) if augmented.params(i, 16, 16) != CropFlipParams(2, 2, False)]
    assert moved
    for index in moved:
        stack, _ = rotation[index]
        assert torch.equal(stack[0], augmented[index])  # the 0-degree copy is the cropped and flipped image
        assert not torch.equal(stack[0], images[index])


@pytest.mark.parametrize('kwargs, error, message', [
    ({'seed': -1}, ValueError, 'seed'),
    ({'seed': 1.5}, TypeError, 'seed'),
    ({'padding': -2}, ValueError, 'padding'),
    ({'padding': 2.0}, TypeError, 'padding'),
    ({'padding': True}, TypeError, 'padding'),
    ({'flip': 'yes'}, TypeError, 'flip'),
])
def test_bad_arguments_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        CropFlipDataset(BareImages(_images()), **kwargs)


def test_bad_bases_and_items_are_refused():
    with pytest.raises(ValueError, match='empty'):
        CropFlipDataset(BareImages(torch.zeros(0, 3, 16, 16)))
    with pytest.raises(TypeError, match='map-style'):
        CropFlipDataset(iter([torch.zeros(3, 16, 16)]))
    with pytest.raises(TypeError, match='float image'):
        CropFlipDataset(BareImages(torch.zeros(2, 3, 16, 16, dtype=torch.uint8)))[0]
    with pytest.raises(ValueError, match=r'\[C, H, W\]'):
        CropFlipDataset(BareImages(torch.zeros(2, 16)))[0]
    with pytest.raises(IndexError, match='out of range'):
        CropFlipDataset(BareImages(_images()))[24]
    with pytest.raises(ValueError, match='offsets'):
        crop_and_flip(torch.zeros(3, 8, 8), CropFlipParams(5, 0, False), 2)
    with pytest.raises(ValueError, match='epoch'):
        CropFlipDataset(BareImages(_images())).set_epoch(-1)


def test_padding_default_follows_the_image_size():
    dataset = CropFlipDataset(BareImages(_images()))
    assert dataset.padding_for(32, 32) == 4 and dataset.padding_for(16, 24) == 2 and dataset.padding_for(7, 7) == 0
    assert 'padding=min(H, W) // 8' in repr(dataset)
