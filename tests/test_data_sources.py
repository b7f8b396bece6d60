"""Tests for nni_labelfree.data.sources: the image-source registry, noise, image folders, archives, CIFAR."""
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nni_labelfree.data import (CIFAR10_MEAN, CIFAR10_STD, GaussianNoiseImages, ImageFileDataset,
                                TensorImageDataset, extract_archive, image_source, list_image_sources)
from nni_labelfree.data import sources

SHARED_DATA = Path(__file__).parents[1] / '..' / 'shared' / 'data'
CIFAR_ARCHIVE = SHARED_DATA / 'images' / 'cifar10_jpeg.tar.gz'


def _write_image(path: Path, value: int, size=(32, 32), image_format='PNG') -> None:
    """One image whose red channel is ``value`` everywhere, so the index it lands at can be read back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[..., 0] = value
    array[..., 1] = 255 - value
    Image.fromarray(array).save(path, format=image_format)


@pytest.fixture
def image_folder(tmp_path):
    """20 PNGs under nested folders, plus files that must be ignored. Red channel = 10 * sorted position."""
    root = tmp_path / 'images'
    names = [f'a/img{i:02d}.png' for i in range(8)] + [f'b/deep/er/img{i:02d}.PNG' for i in range(8)] + \
            [f'c{i}.png' for i in range(4)]
    for position, name in enumerate(sorted(names, key=str)):
        _write_image(root / name, 10 * position)
    (root / 'notes.txt').write_text('not an image')
    (root / '.hidden.png').write_bytes(b'macOS metadata, not an image')
    return root


def _red_values(dataset) -> list:
    return dataset.images[:, 0, 0, 0].tolist()


def _make_tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, 'w:gz') as tar:
        tar.add(folder, arcname='.')
    return archive


def test_registry_lists_the_four_sources():
    assert list_image_sources() == ['cifar10', 'cifar100', 'imagefolder', 'noise']


def test_unknown_source_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown image source 'imagenet'.*'cifar10'.*'noise'"):
        image_source('imagenet')


def test_noise_is_fixed_per_index_and_independent_of_access_order():
    first = GaussianNoiseImages(50, seed=3)
    forward = [first[i][0] for i in range(50)]
    second = GaussianNoiseImages(50, seed=3)
    backward = [second[i][0] for i in reversed(range(50))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    assert torch.equal(first[7][0], first[7][0])
    assert not torch.equal(forward[0], forward[1])


def test_noise_seeds_differ_without_index_collisions():
    assert not torch.equal(GaussianNoiseImages(10, seed=0)[3][0], GaussianNoiseImages(10, seed=1)[3][0])
    # seed + index mixing would make these two equal
    assert not torch.equal(GaussianNoiseImages(10, seed=0)[1][0], GaussianNoiseImages(10, seed=1)[0][0])


def test_noise_statistics_shape_and_labels():
    dataset = image_source('noise', num_images=200, image_size=16, seed=5)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert images.shape == (200, 3, 16, 16) and images.dtype == torch.float32
    assert abs(images.mean().item()) < 0.02 and abs(images.std().item() - 1) < 0.02
    assert {dataset[i][1] for i in range(10)} == {-1} and dataset.num_true_classes is None
    assert len(image_source('noise')) == 10000
    with pytest.raises(IndexError):
        dataset[200]


def test_imagefolder_finds_nested_images_sorted_and_ignores_other_files(image_folder):
    dataset = image_source('imagefolder', root=image_folder)
    assert isinstance(dataset, TensorImageDataset) and len(dataset) == 20
    assert _red_values(dataset) == [10 * i for i in range(20)]
    assert dataset.num_true_classes is None and dataset.targets == [-1] * 20
    image, label = dataset[4]
    assert label == -1 and image.shape == (3, 32, 32) and image.dtype == torch.float32
    expected_red = (40 / 255 - CIFAR10_MEAN[0]) / CIFAR10_STD[0]
    assert torch.allclose(image[0], torch.full((32, 32), expected_red), atol=1e-5)


def test_imagefolder_lazy_matches_in_memory(image_folder):
    cached = image_source('imagefolder', root=image_folder, num_images=6, seed=2)
    lazy = image_source('imagefolder', root=image_folder, num_images=6, seed=2, cache_in_memory=False)
    assert isinstance(lazy, ImageFileDataset) and len(lazy) == 6
    for i in range(6):
        assert torch.equal(cached[i][0], lazy[i][0]) and lazy[i][1] == -1


def test_imagefolder_converts_and_resizes(tmp_path):
    Image.fromarray(np.full((48, 64), 128, dtype=np.uint8)).save(tmp_path / 'gray.jpg')
    _write_image(tmp_path / 'rgba.png', 50, size=(20, 20))
    dataset = image_source('imagefolder', root=tmp_path, image_size=24)
    assert dataset.images.shape == (2, 3, 24, 24)
    assert (dataset.images[0].int() - 128).abs().max() <= 2  # grey converted to RGB, JPEG-lossy


def test_imagefolder_uses_split_subfolder_when_present(tmp_path):
    for i in range(3):
        _write_image(tmp_path / 'train' / 'cls' / f'{i}.png', 1)
    for i in range(2):
        _write_image(tmp_path / 'test' / 'cls' / f'{i}.png', 2)
    assert len(image_source('imagefolder', root=tmp_path, split='train')) == 3
    assert _red_values(image_source('imagefolder', root=tmp_path, split='test')) == [2, 2]
    assert len(image_source('imagefolder', root=tmp_path, split='other')) == 5  # no such subfolder: all of root


def test_imagefolder_missing_root_names_the_path(tmp_path):
    missing = tmp_path / 'nope'
    with pytest.raises(FileNotFoundError, match=r'nope.*does not exist.*folder of images'):
        image_source('imagefolder', root=missing)
    with pytest.raises(ValueError, match='needs root'):
        image_source('imagefolder')


def test_imagefolder_without_images_lists_extensions(tmp_path):
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'sub' / 'readme.txt').write_text('x')
    with pytest.raises(ValueError, match=r'no image files found.*\.jpg.*\.webp'):
        image_source('imagefolder', root=tmp_path)


def test_imagefolder_reports_undecodable_file(tmp_path):
    _write_image(tmp_path / 'good.png', 3)
    (tmp_path / 'broken.jpg').write_bytes(b'not really a jpeg')
    with pytest.raises(ValueError, match='could not decode image .*broken.jpg'):
        image_source('imagefolder', root=tmp_path)


def test_imagefolder_never_modifies_the_users_folder(image_folder):
    before = sorted((p, p.stat().st_mtime_ns) for p in image_folder.rglob('*'))
    image_source('imagefolder', root=image_folder, num_images=5)
    assert sorted((p, p.stat().st_mtime_ns) for p in image_folder.rglob('*')) == before


def test_subset_is_deterministic_nested_and_seeded(image_folder):
    def subset(n, seed):
        return _red_values(image_source('imagefolder', root=image_folder, num_images=n, seed=seed))

    assert subset(5, 0) == subset(5, 0)
    assert subset(5, 0) != subset(5, 1)
    assert set(subset(5, 0)) <= set(subset(10, 0))
    assert len(set(subset(5, 0))) == 5
    with pytest.raises(ValueError, match='num_images=21 but the source has 20 images'):
        image_source('imagefolder', root=image_folder, num_images=21)
    with pytest.raises(ValueError, match='num_images=0'):
        image_source('imagefolder', root=image_folder, num_images=0)


def test_archive_is_extracted_once_and_reused(image_folder, tmp_path, monkeypatch):
    archive = _make_tar(image_folder, tmp_path / 'mine.tar.gz')
    cache = tmp_path / 'cache'
    dataset = image_source('imagefolder', root=archive, cache_dir=cache)
    assert _red_values(dataset) == [10 * i for i in range(20)]
    extracted = [p for p in cache.iterdir()]
    assert len(extracted) == 1 and extracted[0].name.startswith('mine-')

    def must_not_extract(*args):
        raise AssertionError('archive extracted a second time')
    monkeypatch.setattr(sources, '_extract_into', must_not_extract)
    assert _red_values(image_source('imagefolder', root=archive, cache_dir=cache)) == _red_values(dataset)
    assert archive.exists()


def test_interrupted_extraction_is_not_taken_for_complete(image_folder, tmp_path, monkeypatch):
    archive = _make_tar(image_folder, tmp_path / 'mine.tgz')
    cache = tmp_path / 'cache'
    real_extract = sources._extract_into

    def extract_then_die(archive_path, destination):
        real_extract(archive_path, destination)
        raise KeyboardInterrupt('killed mid-way')
    monkeypatch.setattr(sources, '_extract_into', extract_then_die)
    with pytest.raises(KeyboardInterrupt):
        extract_archive(archive, cache)
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(sources, '_extract_into', real_extract)
    assert len(image_source('imagefolder', root=archive, cache_dir=cache)) == 20


@pytest.mark.parametrize('member_name', ['../escape.png', '/tmp/absolute_escape.png', 'ok/../../escape.png'])
def test_unsafe_archive_members_are_refused(tmp_path, member_name):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(buffer, format='PNG')
    archive = tmp_path / 'evil.tar'
    with tarfile.open(archive, 'w') as tar:
        info = tarfile.TarInfo(member_name)
        info.size = len(buffer.getvalue())
        tar.addfile(info, io.BytesIO(buffer.getvalue()))
    cache = tmp_path / 'cache'
    with pytest.raises(ValueError, match='unsafe member path'):
        image_source('imagefolder', root=archive, cache_dir=cache)
    assert not (tmp_path / 'escape.png').exists() and list(cache.iterdir()) == []


def test_root_file_that_is_not_an_archive(tmp_path):
    (tmp_path / 'list.csv').write_text('a,b')
    with pytest.raises(ValueError, match='not a .tar.gz/.tgz/.tar archive'):
        image_source('imagefolder', root=tmp_path / 'list.csv')


def test_shipped_cifar10_jpeg_archive():
    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f'shared test data not found at {CIFAR_ARCHIVE.resolve()} (see shared/data/README.md)')
    # default cache dir: the 60k-file extraction happens once per machine, later runs reuse it
    dataset = image_source('imagefolder', root=CIFAR_ARCHIVE, split='train', num_images=200, seed=0)
    assert len(dataset) == 200 and dataset.images.shape == (200, 3, 32, 32)
    images = torch.stack([dataset[i][0] for i in range(200)])
    assert images.mean(dim=(0, 2, 3)).abs().max() < 0.25  # CIFAR-10 statistics normalise it to about 0
    assert 0.7 < images.std().item() < 1.3
    assert dataset[0][1] == -1
    again = image_source('imagefolder', root=CIFAR_ARCHIVE, split='train', num_images=200, seed=0)
    assert torch.equal(again.images, dataset.images)


def test_cifar_without_files_and_without_download_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'CIFAR-10 files not found.*download=True.*--download.*imagefolder'):
        image_source('cifar10', root=tmp_path)
    with pytest.raises(FileNotFoundError, match='CIFAR-100 files not found'):
        image_source('cifar100', root=tmp_path, split='test')
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        image_source('cifar10', root=tmp_path, split='val')


class _FakeCIFAR10:
    """Stands in for torchvision's CIFAR10 (whose files are checksummed, so cannot be faked on disk)."""
    base_folder = 'cifar-10-batches-py'

    def __init__(self, root, train=True, download=False):
        count = 50 if train else 20
        self.data = np.zeros((count, 32, 32, 3), dtype=np.uint8)
        self.data[..., 0] = np.arange(count, dtype=np.uint8)[:, None, None]
        self.targets = [i % 10 for i in range(count)]


def test_cifar_source_keeps_true_labels_subsets_and_resizes(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torchvision.datasets, 'CIFAR10', _FakeCIFAR10)
    dataset = image_source('cifar10', root=tmp_path, num_images=12, seed=4)
    assert len(dataset) == 12 and dataset.num_true_classes == 10
    indices = _red_values(dataset)
    assert indices == sorted(indices) and [dataset[i][1] for i in range(12)] == [i % 10 for i in indices]
    assert dataset.targets == [i % 10 for i in indices]
    assert _red_values(image_source('cifar10', root=tmp_path, num_images=12, seed=4)) == indices
    assert len(image_source('cifar10', root=tmp_path, split='test')) == 20
    assert image_source('cifar10', root=tmp_path, image_size=16)[0][0].shape == (3, 16, 16)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='image_size'):
        image_source('noise', image_size=0)
    with pytest.raises(ValueError, match='seed'):
        GaussianNoiseImages(4, seed=-1)
    with pytest.raises(ValueError, match='mean and std'):
        TensorImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match='uint8'):
        TensorImageDataset(torch.zeros(2, 3, 4, 4))
