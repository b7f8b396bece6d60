"""Pi-NAS selects on held-out images: a seeded split, carried through the search's builder, and probes drawn
across the whole (class-sorted) dataset rather than from its front."""
import pytest
import torch

from nni_labelfree.data import DatasetPart, TensorImageDataset, split_held_out
from nni_labelfree.experiment.config import resolve_config
from nni_labelfree.experiment.search import _pinas_queue_size, build_search, with_keys_added_later
from nni_labelfree.strategies.pinas_probes import probe_images, spread_indices


def _class_sorted(count: int = 40, classes: int = 4) -> TensorImageDataset:
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 3, 4, 4).contiguous()
    labels = torch.arange(classes).repeat_interleave(count // classes)
    return TensorImageDataset(images, labels, num_true_classes=classes)


def test_split_is_seeded_disjoint_complete_and_keeps_the_class_count():
    data = _class_sorted()
    train, held_out = split_held_out(data, 0.25, seed=3)
    assert isinstance(train, DatasetPart) and len(held_out) == 10 and len(train) == 30
    assert not set(train.indices) & set(held_out.indices) and set(train.indices) | set(held_out.indices) == set(range(40))
    assert held_out.indices == split_held_out(data, 0.25, seed=3)[1].indices  # same seed, same split
    assert held_out.indices != split_held_out(data, 0.25, seed=4)[1].indices
    assert held_out.indices != list(range(30, 40)) and held_out.num_true_classes == 4
    assert len({int(data[i][1]) for i in held_out.indices}) > 1  # not one class from the end of a sorted folder


@pytest.mark.parametrize('fraction', [0.0, 1.0, -0.1, 0.001])
def test_bad_fractions_are_refused(fraction):
    with pytest.raises(ValueError, match='held'):
        split_held_out(_class_sorted(), fraction, seed=0)


def test_probes_spread_over_a_class_sorted_dataset():
    data = _class_sorted()
    indices = spread_indices(len(data), 12, seed=1)
    assert len(set(indices)) == 12 and len({int(data[i][1]) for i in indices}) >= 3
    assert indices == spread_indices(len(data), 12, seed=1) and indices != spread_indices(len(data), 12, seed=2)
    assert torch.equal(probe_images(data, 12, seed=1), torch.stack([data[i][0] for i in indices]))


def test_pinas_search_trains_on_one_part_and_selects_on_the_other():
    config = resolve_config({'strategy': 'pinas', 'data': 'noise', 'channels': 4, 'num_images': 50, 'batch_size': 8,
                             'queue_size': 16, 'held_out_fraction': 0.2, 'seed': 2})
    parts = build_search(config)
    module = parts.evaluator.module
    assert len(parts.train_images) == 40 and len(parts.held_out_images) == 10
    assert module.train_base is parts.train_images and module.val_base is parts.held_out_images
    assert not set(parts.train_images.indices) & set(parts.held_out_images.indices)
    assert parts.strategy.queue_size <= 20  # the default queue is capped by the images trained on
    rlnas = build_search(resolve_config({'data': 'noise', 'channels': 4, 'num_images': 50, 'batch_size': 8}))
    assert rlnas.held_out_images is None and len(rlnas.train_images) == 50


def test_pinas_precision_keys_reach_the_strategy():
    config = resolve_config({'strategy': 'pinas', 'data': 'noise', 'channels': 4, 'num_images': 50, 'batch_size': 8,
                             'teacher_precision': 'bfloat16', 'queue_precision': 'bfloat16'})
    strategy = build_search(config).strategy
    assert (strategy.teacher_precision, strategy.queue_precision) == ('bfloat16', 'bfloat16')


def test_pinas_searches_from_before_the_split_resume_as_they_ran():
    old = {'strategy': 'pinas', 'seed': 0}
    assert with_keys_added_later(old)['held_out_fraction'] == 0.0
    assert with_keys_added_later({'strategy': 'rlnas'})['held_out_fraction'] == 0.2
    assert with_keys_added_later({**old, 'held_out_fraction': 0.3})['held_out_fraction'] == 0.3
    # their default queue held half the images; an explicit queue_size never depended on the fraction
    assert with_keys_added_later(old)['queue_fraction'] == 0.5
    assert with_keys_added_later({**old, 'queue_size': 64})['queue_fraction'] == 0.08
    assert with_keys_added_later({'strategy': 'rlnas'})['queue_fraction'] == 0.08
    assert with_keys_added_later(old)['queue_precision'] == 'float32'  # and their queue was float32


@pytest.mark.parametrize('images, fraction, batch, expected', [
    (2000, 0.08, 64, 128),     # 1,600 training images (20% held out): 128 keys, two batches
    (1000, 0.08, 64, 64),      # 800 training images: 64 keys rounds down to one batch
    (200, 0.08, 64, 64),       # fewer than one batch's worth: still one batch
    (2000, 0.5, 64, 768),      # the rule before queue_fraction existed
    (1_000_000, 0.08, 256, 49152),  # capped at the paper's queue
])
def test_default_pinas_queue_is_a_fraction_of_the_training_images_in_whole_batches(images, fraction, batch, expected):
    config = resolve_config({'strategy': 'pinas', 'data': 'noise', 'channels': 4, 'num_images': images,
                             'batch_size': batch, 'queue_fraction': fraction})
    assert _pinas_queue_size(config, int(images * 0.8)) == expected


def test_queue_fraction_outside_zero_to_one_is_refused_with_its_meaning():
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match='queue_fraction must be in \\(0, 1\\].*queue_size is null'):
            resolve_config({'strategy': 'pinas', 'queue_fraction': bad})
    with pytest.raises(ValueError, match='queue_fraction must be non-negative, got -0.1'):
        resolve_config({'strategy': 'pinas', 'queue_fraction': -0.1})
