"""Tests for nni_labelfree.data.random_labels: the RLNAS random-label wrapper in its four modes."""
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from nni_labelfree.data import RANDOM_LABEL_MODES, RandomLabelDataset, random_label_dataset

ONCE_MODES = ['uniform_once', 'shuffle_once']
PER_ITERATION_MODES = ['uniform_per_iteration', 'shuffle_per_iteration']


class LabeledImages(Dataset):
    """``(image, label)`` items with a ``targets`` list, like torchvision datasets; image i is filled with i."""

    def __init__(self, labels):
        self.targets = list(labels)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return torch.full((1, 2, 2), float(index)), self.targets[index]


class BareImages(Dataset):
    """Items are images only, no labels, no ``targets``."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return torch.full((1, 2, 2), float(index))


def _balanced_labels(size, num_classes):
    return [i % num_classes for i in range(size)]


def test_modes_constant():
    assert RANDOM_LABEL_MODES == ('uniform_once', 'shuffle_once', 'uniform_per_iteration', 'shuffle_per_iteration')


@pytest.mark.parametrize('mode', RANDOM_LABEL_MODES)
def test_labels_are_fixed_per_index_and_reproducible(mode):
    base = LabeledImages(_balanced_labels(300, 10))
    first, second = RandomLabelDataset(base, 10, mode, seed=7), RandomLabelDataset(base, 10, mode, seed=7)
    assert torch.equal(first.labels, second.labels)
    assert [first[i][1] for i in range(300)] == [first[i][1] for i in range(300)] == first.labels.tolist()
    assert not torch.equal(first.labels, RandomLabelDataset(base, 10, mode, seed=8).labels)


@pytest.mark.parametrize('mode', RANDOM_LABEL_MODES)
def test_items_are_image_and_python_int_in_range(mode):
    dataset = RandomLabelDataset(LabeledImages(_balanced_labels(200, 5)), 5, mode, seed=1)
    image, label = dataset[17]
    assert torch.equal(image, torch.full((1, 2, 2), 17.0))
    assert type(label) is int and 0 <= label < 5
    assert dataset.labels.dtype == torch.int64 and len(dataset.labels) == len(dataset) == 200
    assert int(dataset.labels.min()) >= 0 and int(dataset.labels.max()) < 5


def test_uniform_labels_are_roughly_uniform_over_all_classes():
    labels = RandomLabelDataset(BareImages(10000), 10, 'uniform_once', seed=0).labels
    counts = torch.bincount(labels, minlength=10)
    assert len(counts) == 10 and int(counts.min()) > 850 and int(counts.max()) < 1150


def test_bare_image_base_gets_labels_in_every_mode():
    base = BareImages(100)
    for mode in RANDOM_LABEL_MODES:
        image, label = RandomLabelDataset(base, 4, mode)[3]
        assert torch.equal(image, base[3]) and 0 <= label < 4


@pytest.mark.parametrize('mode', ['shuffle_once', 'shuffle_per_iteration'])
def test_shuffle_keeps_the_label_histogram_of_a_labeled_base(mode):
    true_labels = [0] * 500 + [1] * 300 + [2] * 150 + [3] * 50
    dataset = RandomLabelDataset(LabeledImages(true_labels), 4, mode, seed=2)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        assert dataset.labels.sort().values.tolist() == true_labels
        assert dataset.labels.tolist() != true_labels


def test_shuffle_of_unlabeled_base_is_balanced():
    for base in (BareImages(103), LabeledImages([-1] * 103)):
        counts = torch.bincount(RandomLabelDataset(base, 10, 'shuffle_once', seed=0).labels, minlength=10)
        assert counts.tolist() == [11, 11, 11] + [10] * 7


def test_shuffle_reads_labels_of_a_subset_by_iterating():
    full = LabeledImages([0] * 50 + [1] * 50)
    subset = Subset(full, list(range(40)) + list(range(90, 100)))  # 40 zeros and 10 ones
    counts = torch.bincount(RandomLabelDataset(subset, 2, 'shuffle_once').labels, minlength=2)
    assert counts.tolist() == [40, 10]


@pytest.mark.parametrize('mode', PER_ITERATION_MODES)
def test_per_iteration_labels_change_with_epoch_and_are_reproducible(mode):
    base = LabeledImages(_balanced_labels(500, 10))
    dataset = RandomLabelDataset(base, 10, mode, seed=3)
    epoch0 = dataset.labels
    dataset.set_epoch(1)
    epoch1 = dataset.labels
    assert dataset.epoch == 1 and not torch.equal(epoch0, epoch1)
    assert [dataset[i][1] for i in range(500)] == epoch1.tolist()
    other = RandomLabelDataset(base, 10, mode, seed=3)
    other.set_epoch(1)
    assert torch.equal(other.labels, epoch1)
    dataset.set_epoch(0)
    assert torch.equal(dataset.labels, epoch0)


@pytest.mark.parametrize('mode', ONCE_MODES)
def test_once_modes_ignore_set_epoch(mode):
    dataset = RandomLabelDataset(LabeledImages(_balanced_labels(300, 10)), 10, mode, seed=4)
    before = dataset.labels
    dataset.set_epoch(5)
    assert torch.equal(dataset.labels, before) and dataset.epoch == 0


@pytest.mark.parametrize('mode', RANDOM_LABEL_MODES)
def test_random_labels_agree_with_true_labels_only_by_chance(mode):
    base = LabeledImages(torch.randint(0, 10, (5000,), generator=torch.Generator().manual_seed(0)).tolist())
    dataset = RandomLabelDataset(base, 10, mode, seed=0)
    agreement = (dataset.labels == torch.tensor(base.targets)).float().mean().item()
    assert 0.08 < agreement < 0.12
    returned = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    assert torch.equal(returned, dataset.labels)


def test_wrapper_does_not_touch_base_targets():
    base = LabeledImages(_balanced_labels(100, 10))
    dataset = RandomLabelDataset(base, 10, 'uniform_once')
    assert base.targets == _balanced_labels(100, 10)
    dataset.labels[:] = 0  # `labels` is a copy: writing to it changes nothing
    assert int(dataset.labels.max()) > 0


def test_dataloader_batches_carry_the_random_labels():
    dataset = RandomLabelDataset(LabeledImages(_balanced_labels(64, 4)), 4, 'uniform_once', seed=9)
    labels = torch.cat([target for _, target in DataLoader(dataset, batch_size=16)])
    assert labels.dtype == torch.int64 and torch.equal(labels, dataset.labels)


def test_convenience_function_matches_class():
    base = BareImages(50)
    made = random_label_dataset(base, 3, mode='shuffle_per_iteration', seed=5)
    assert isinstance(made, RandomLabelDataset) and made.mode == 'shuffle_per_iteration'
    assert torch.equal(made.labels, RandomLabelDataset(base, 3, 'shuffle_per_iteration', 5).labels)


@pytest.mark.parametrize('kwargs, error', [
    (dict(num_classes=1), 'num_classes must be an integer >= 2'),
    (dict(num_classes=2.5), 'num_classes must be an integer >= 2'),
    (dict(num_classes=10, mode='uniform'), "unknown random-label mode 'uniform'.*uniform_once"),
    (dict(num_classes=10, seed=-1), 'non-negative'),
])
def test_bad_arguments_raise(kwargs, error):
    with pytest.raises(ValueError, match=error):
        RandomLabelDataset(BareImages(10), **kwargs)


def test_bad_bases_raise():
    with pytest.raises(ValueError, match='empty'):
        RandomLabelDataset(BareImages(0), 10)
    with pytest.raises(ValueError, match='true labels up to 99 but num_classes=10'):
        RandomLabelDataset(LabeledImages(range(100)), 10, 'shuffle_once')
    with pytest.raises(ValueError, match='some items and -1'):
        RandomLabelDataset(LabeledImages([0, 1, -1, 1]), 2, 'shuffle_once')
    with pytest.raises(ValueError, match='epoch must be >= 0'):
        RandomLabelDataset(BareImages(5), 2, 'uniform_per_iteration').set_epoch(-1)
