"""Image sources: where the unlabeled (or ignored-label) images of a label-free search come from.

A tiny registry of named constructors (``image_source(name, ...)``, ``list_image_sources()``). Every source yields
``(image, label)`` with ``image`` a normalised float tensor ``[3, H, W]`` and ``label`` the true class index, or
``-1`` when the source has none. Sources never augment: RLNAS must be able to memorise random labels, and
augmentation works against that (Zhang et al., "Neural Architecture Search with Random Labels", CVPR 2021).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import time
import types
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    'CIFAR10_MEAN', 'CIFAR10_STD', 'IMAGE_EXTENSIONS',
    'image_source', 'list_image_sources', 'derive_seed', 'extract_archive', 'find_image_files',
    'TensorImageDataset', 'ImageFileDataset', 'GaussianNoiseImages',
]

_logger = logging.getLogger(__name__)

CIFAR10_MEAN: Tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: Tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
IMAGE_EXTENSIONS: Tuple[str, ...] = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
_ARCHIVE_SUFFIXES: Tuple[str, ...] = ('.tar.gz', '.tgz', '.tar')
_DEFAULT_NOISE_IMAGES = 10000

PathLike = Union[str, os.PathLike]


def derive_seed(seed: int, *keys: int) -> int:
    """Mix a base seed with integer keys (an image index, an epoch) into an independent 63-bit seed.

    Uses numpy's ``SeedSequence`` hashing, so nearby ``(seed, key)`` pairs give unrelated streams, unlike
    ``seed + key`` which makes seed 0 / index 1 collide with seed 1 / index 0.
    """
    if seed < 0 or any(k < 0 for k in keys):
        raise ValueError(f'seed and keys must be non-negative integers, got seed={seed}, keys={keys}; '
                         'pass a seed >= 0.')
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def _normalise(image_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (image_uint8.float().div_(255.0) - mean) / std


def _channel_stats(mean: Sequence[float], std: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f'mean and std must be 3 per-channel values with std > 0, got mean={mean}, std={std}; '
                         'pass e.g. CIFAR10_MEAN and CIFAR10_STD.')
    return torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)


class TensorImageDataset(Dataset):
    """Images held in memory as one uint8 tensor ``[N, 3, H, W]``, normalised on access.

    Parameters
    ----------
    images
        uint8 tensor ``[N, 3, H, W]``.
    labels
        int64 tensor ``[N]`` of true labels, or None when the images are unlabeled (every label is then -1).
    mean, std
        Per-channel statistics used to normalise ``image / 255``.
    num_true_classes
        Number of true classes, or None for unlabeled images.
    """

    def __init__(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None, *,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                 num_true_classes: Optional[int] = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f'images must be a uint8 tensor [N, 3, H, W], got {images.dtype} {tuple(images.shape)}.')
        if labels is None:
            labels = torch.full((len(images),), -1, dtype=torch.int64)
        if len(labels) != len(images):
            raise ValueError(f'got {len(images)} images but {len(labels)} labels; pass one label per image.')
        self.images = images
        self._labels = labels.to(torch.int64)
        self._mean, self._std = _channel_stats(mean, std)
        self.num_true_classes = num_true_classes

    @property
    def targets(self) -> list:
        """True labels as a list of ints (-1 for unlabeled images); read-only, never used for random labels."""
        return self._labels.tolist()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return _normalise(self.images[index], self._mean, self._std), int(self._labels[index])


class _Unlabeled:
    """Mixin for sources without classes: ``num_true_classes`` is None and every target is -1."""

    num_true_classes = None

    @property
    def targets(self) -> list:
        return [-1] * len(self)


class ImageFileDataset(_Unlabeled, Dataset):
    """Unlabeled image files decoded on every access (for folders too large to hold in memory).

    Parameters
    ----------
    paths
        Image files, in the order of their indices.
    image_size
        Side of the square output; images of another size are resized (aspect kept, centre cropped).
    mean, std
        Per-channel statistics used to normalise ``image / 255``.
    """

    def __init__(self, paths: Sequence[Path], image_size: int = 32, *,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD) -> None:
        self.paths = list(paths)
        self.image_size = image_size
        self._mean, self._std = _channel_stats(mean, std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        array = _decode_image(self.paths[index], self.image_size)
        return _normalise(torch.from_numpy(array).permute(2, 0, 1), self._mean, self._std), -1


class GaussianNoiseImages(_Unlabeled, Dataset):
    """Pure N(0, 1) noise images, one fixed image per index, generated on access.

    The image at index ``i`` comes from a generator seeded from ``(seed, i)``, so it is bitwise identical on
    every access, in any order, in any worker, and nothing is held in memory. The noise is already zero-mean
    unit-variance, so it is not normalised again. Labels are -1.

    Parameters
    ----------
    num_images
        Number of images (the dataset length).
    shape
        Shape of each image, ``(C, H, W)``.
    seed
        Base seed; different seeds give different images.
    """

    def __init__(self, num_images: int, shape: Tuple[int, int, int] = (3, 32, 32), seed: int = 0) -> None:
        if num_images < 1 or len(shape) != 3 or min(shape) < 1:
            raise ValueError(f'need num_images >= 1 and a positive (C, H, W) shape, got num_images={num_images}, '
                             f'shape={shape}.')
        derive_seed(seed)  # validates the seed early
        self.num_images, self.shape, self.seed = int(num_images), tuple(int(s) for s in shape), int(seed)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f'index {index} out of range for {self.num_images} noise images.')
        generator = torch.Generator().manual_seed(derive_seed(self.seed, index % self.num_images))
        return torch.randn(self.shape, generator=generator), -1


@dataclasses.dataclass(frozen=True)
class _SourceOptions:
    root: Optional[Path]
    split: str
    download: bool
    num_images: Optional[int]
    seed: int
    image_size: int
    cache_in_memory: bool
    cache_dir: Optional[Path]
    mean: Sequence[float]
    std: Sequence[float]


def image_source(name: str, *, root: Optional[PathLike] = None, split: str = 'train', download: bool = False,
                 num_images: Optional[int] = None, seed: int = 0, image_size: int = 32,
                 cache_in_memory: bool = True, cache_dir: Optional[PathLike] = None,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD) -> Dataset:
    """Build a named image source; every item is ``(image [3, H, W] float, true label or -1)``.

    Parameters
    ----------
    name
        One of :func:`list_image_sources`: ``'cifar10'``, ``'cifar100'``, ``'imagefolder'``, ``'noise'``.
    root
        Dataset folder (torchvision CIFAR files; default ``<cache>/datasets``), or for ``'imagefolder'`` a folder
        of images or a ``.tar.gz``/``.tgz``/``.tar`` archive of one. Ignored by ``'noise'``.
    split
        ``'train'`` or ``'test'`` for CIFAR; for ``'imagefolder'`` the subfolder ``root/split`` is used when it
        exists, else the whole of ``root``.
    download
        Let torchvision download CIFAR when its files are absent.
    num_images
        Keep a deterministic subset: the first ``num_images`` of a permutation seeded by ``seed`` (kept in
        index order). For ``'noise'`` it is the number of images (default 10000).
    seed
        Seed of the subset permutation, and of the noise.
    image_size
        Side of the square images returned; other sizes are resized.
    cache_in_memory
        Decode image files once into one uint8 tensor (fast epochs); False decodes on every access.
        CIFAR is always in memory (torchvision loads it whole); noise is always generated on access.
    cache_dir
        Parent folder for extracted archives and default dataset root (default ``~/.cache/nni_labelfree``).
    mean, std
        Per-channel normalisation statistics (CIFAR-10's by default). Not applied to noise.

    Returns
    -------
    torch.utils.data.Dataset
        With attributes ``num_true_classes`` (None when unlabeled) and ``targets``.
    """
    if name not in _SOURCES:
        raise ValueError(f'unknown image source {name!r}; expected one of {list_image_sources()}.')
    if image_size < 1:
        raise ValueError(f'image_size must be a positive number of pixels, got {image_size}.')
    options = _SourceOptions(root=Path(root).expanduser() if root is not None else None, split=split,
                             download=download, num_images=num_images, seed=seed, image_size=image_size,
                             cache_in_memory=cache_in_memory,
                             cache_dir=Path(cache_dir).expanduser() if cache_dir is not None else None,
                             mean=mean, std=std)
    return _SOURCES[name](options)


def list_image_sources() -> list:
    """Names accepted by :func:`image_source`, sorted."""
    return sorted(_SOURCES)


def _default_cache_dir() -> Path:
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'nni_labelfree'


def _subset_indices(total: int, num_images: Optional[int], seed: int) -> torch.Tensor:
    """First ``num_images`` of a seeded permutation of ``range(total)``, sorted; all indices when None."""
    if num_images is None:
        return torch.arange(total)
    if not 1 <= num_images <= total:
        raise ValueError(f'num_images={num_images} but the source has {total} images; pass num_images between 1 '
                         f'and {total}, or None for all of them.')
    permutation = torch.randperm(total, generator=torch.Generator().manual_seed(derive_seed(seed)))
    return permutation[:num_images].sort().values


def _resize_batch(images: torch.Tensor, image_size: int) -> torch.Tensor:
    if images.shape[-2:] == (image_size, image_size):
        return images
    resized = torch.nn.functional.interpolate(images.float(), size=(image_size, image_size), mode='bilinear',
                                              antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _build_cifar(options: _SourceOptions, num_classes: int) -> Dataset:
    import torchvision  # deferred: only CIFAR needs it

    if options.split not in ('train', 'test'):
        raise ValueError(f"CIFAR split must be 'train' or 'test', got {options.split!r}.")
    root = options.root or (options.cache_dir or _default_cache_dir()) / 'datasets'
    cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
    try:
        dataset = cls(str(root), train=options.split == 'train', download=options.download)
    except RuntimeError as exc:
        if options.download:
            raise
        raise FileNotFoundError(
            f'CIFAR-{num_classes} files not found (or corrupted) under {root} (torchvision expects '
            f'{root}/{cls.base_folder}). Pass download=True (CLI flag --download) to fetch them, or use the imagefolder source with a folder '
            'or archive of images.') from exc
    indices = _subset_indices(len(dataset.data), options.num_images, options.seed)
    images = torch.from_numpy(dataset.data)[indices].permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)[indices]
    return TensorImageDataset(_resize_batch(images, options.image_size), labels, mean=options.mean,
                              std=options.std, num_true_classes=num_classes)


def _build_noise(options: _SourceOptions) -> Dataset:
    num_images = options.num_images if options.num_images is not None else _DEFAULT_NOISE_IMAGES
    return GaussianNoiseImages(num_images, (3, options.image_size, options.image_size), seed=options.seed)


def _build_imagefolder(options: _SourceOptions) -> Dataset:
    folder = _resolve_image_root(options.root, options.split, options.cache_dir)
    paths = find_image_files(folder)
    paths = [paths[i] for i in _subset_indices(len(paths), options.num_images, options.seed).tolist()]
    if not options.cache_in_memory:
        return ImageFileDataset(paths, options.image_size, mean=options.mean, std=options.std)
    images = _decode_all(paths, options.image_size)
    return TensorImageDataset(images, None, mean=options.mean, std=options.std, num_true_classes=None)


_SOURCES: types.MappingProxyType = types.MappingProxyType({
    'cifar10': lambda options: _build_cifar(options, 10),
    'cifar100': lambda options: _build_cifar(options, 100),
    'imagefolder': _build_imagefolder,
    'noise': _build_noise,
})


def _resolve_image_root(root: Optional[Path], split: str, cache_dir: Optional[Path]) -> Path:
    if root is None:
        raise ValueError('the imagefolder source needs root=<folder of images or .tar.gz archive>; got None.')
    if not root.exists():
        raise FileNotFoundError(f'image root {root} does not exist; expected a folder of images '
                                f'({", ".join(IMAGE_EXTENSIONS)}, searched recursively) or a .tar.gz/.tgz/.tar '
                                'archive of one. Check the path.')
    if root.is_file():
        if not root.name.lower().endswith(_ARCHIVE_SUFFIXES):
            raise ValueError(f'image root {root} is a file but not a .tar.gz/.tgz/.tar archive; pass a folder '
                             'of images or an archive of one.')
        root = extract_archive(root, cache_dir)
    return root / split if split and (root / split).is_dir() else root


def find_image_files(folder: PathLike) -> list:
    """All image files under ``folder``, recursively, sorted by relative path; hidden files are skipped.

    Hidden files (names starting with ``.``) are skipped because archives made on macOS carry ``._name.jpg``
    metadata files that are not images.
    """
    folder = Path(folder)
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = [d for d in subdirs if not d.startswith('.')]
        found += [os.path.join(directory, f) for f in files
                  if not f.startswith('.') and f.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise ValueError(f'no image files found under {folder}; expected files ending in '
                         f'{", ".join(IMAGE_EXTENSIONS)} (any case, in any subfolder).')
    # every path shares the same prefix, so sorting whole strings sorts by relative path
    return [Path(p) for p in sorted(found, key=lambda p: p.replace(os.sep, '/'))]


def _decode_image(path: Path, image_size: int) -> np.ndarray:
    """Decode one file to a uint8 ``[image_size, image_size, 3]`` RGB array (aspect kept, centre cropped)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            if image.size != (image_size, image_size):
                image.draft('RGB', (image_size, image_size))  # lets JPEG decode large photos at reduced scale
            image = image.convert('RGB')
            if image.size != (image_size, image_size):
                image = ImageOps.fit(image, (image_size, image_size), method=Image.Resampling.BILINEAR)
            return np.array(image, dtype=np.uint8)  # a writable copy, safe for torch.from_numpy
    except (OSError, ValueError) as exc:
        raise ValueError(f'could not decode image {path}: {exc}. Remove or replace the file.') from exc


def _decode_all(paths: Sequence[Path], image_size: int) -> torch.Tensor:
    """Decode files into one uint8 tensor ``[N, 3, S, S]`` (about 10k small JPEGs per second)."""
    start = time.perf_counter()
    array = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    for index, path in enumerate(paths):
        array[index] = _decode_image(path, image_size)
    _logger.info('Decoded %d images in %.1f s', len(paths), time.perf_counter() - start)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def _archive_stem(archive: Path) -> str:
    name = archive.name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return archive.stem


def _check_members(members: Sequence[tarfile.TarInfo], archive: Path) -> None:
    """Reject absolute paths and ``..`` in member names or link targets (path traversal)."""
    for member in members:
        names = [member.name] + ([member.linkname] if member.issym() or member.islnk() else [])
        for name in names:
            if name.startswith(('/', '\\')) or os.path.isabs(name) or '..' in PurePosixPath(name).parts:
                raise ValueError(f'archive {archive} has an unsafe member path {name!r} (absolute or containing '
                                 "'..'); refusing to extract. Repack the archive with relative paths.")


def _extract_into(archive: Path, destination: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            _check_members(members, archive)
            if hasattr(tarfile, 'data_filter'):
                tar.extractall(destination, filter='data')
            else:  # older Python: extract regular files and folders only
                tar.extractall(destination, members=[m for m in members if m.isfile() or m.isdir()])
    except tarfile.TarError as exc:  # includes the 'data' filter's refusals
        raise ValueError(f'could not extract archive {archive}: {exc}. Expected a valid .tar.gz/.tgz/.tar of '
                         'images with relative paths.') from exc


def extract_archive(archive: PathLike, cache_dir: Optional[PathLike] = None) -> Path:
    """Extract a ``.tar.gz``/``.tgz``/``.tar`` archive once and return the extracted folder.

    The folder is ``cache_dir/<archive stem>-<hash of path, size and mtime>``, so a changed archive is
    extracted again. Extraction goes into a temporary folder next to it, renamed into place only when complete:
    a killed extraction never looks finished, and concurrent extractions of the same archive both succeed.

    Parameters
    ----------
    archive
        The archive file; it is only read.
    cache_dir
        Parent folder of extractions (default ``~/.cache/nni_labelfree``, or ``$XDG_CACHE_HOME/nni_labelfree``).
    """
    archive = Path(archive).expanduser().resolve()
    stat = archive.stat()
    key = hashlib.sha256(f'{archive}|{stat.st_size}|{stat.st_mtime_ns}'.encode()).hexdigest()[:12]
    parent = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    target = parent / f'{_archive_stem(archive)}-{key}'
    if target.is_dir():
        _logger.info('Reusing extracted %s at %s', archive, target)
        return target
    parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f'.{target.name}.partial-', dir=parent))
    os.chmod(temporary, 0o755)  # mkdtemp makes it private; the cache is as readable as any other
    try:
        _logger.info('Extracting %s to %s', archive, target)
        _extract_into(archive, temporary)
        try:
            os.rename(temporary, target)
        except OSError:
            if not target.is_dir():  # a concurrent extraction that won the race is fine; anything else is not
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target
