"""Helpers shared by the test modules (imported as ``from helpers import ...``; pytest puts tests/ on sys.path)."""
import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.oneshot.pytorch.strategy import RandomOneShot

from nni_labelfree.data import TensorImageDataset
from nni_labelfree.metrics.angle import parameter_snapshot
from nni_labelfree.strategies import RLNAS

__all__ = ['RecordSamples', 'perturb_supernet', 'quadrant_images', 'run_rlnas']


class RecordSamples(pl.Callback):
    """Keeps the architecture a one-shot module trained at every step (``pl_module.last_sample``)."""

    def __init__(self):
        self.samples = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.samples.append(dict(pl_module.last_sample))


def perturb_supernet(space):
    """Mutate ``space`` into a one-shot supernet, snapshot its initial weights, then move every weight
    (``0.8 w + 0.3 noise``, noise from the global torch RNG: seed it first). Returns ``(space, initial)``."""
    RandomOneShot().mutate_model(space)
    initial = parameter_snapshot(space)
    with torch.no_grad():
        for p in space.parameters():
            p.mul_(0.8).add_(0.3 * torch.randn_like(p))
    return space, initial


def run_rlnas(make_space, image, batch_size, max_epochs):
    """RLNAS (seed 0, a small evolution) on 48 random 10-class images of ``image`` px; the space is built by
    ``make_space()`` after ``torch.manual_seed(0)``. Returns ``(experiment, strategy, sampled architectures)``."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(48, 3, image, image, generator=g), torch.randint(0, 10, (48,), generator=g))
    recorder = RecordSamples()
    evaluator = Classification(train_dataloaders=DataLoader(data, batch_size=batch_size, shuffle=True),
                               val_dataloaders=DataLoader(data, batch_size=batch_size), num_classes=10,
                               learning_rate=0.05, max_epochs=max_epochs, enable_progress_bar=False, logger=False,
                               enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                               callbacks=[recorder])
    strategy = RLNAS(seed=0, evolution=dict(population_size=12, top_k=4, num_mutation=6, num_crossover=6,
                                            generations=3))
    torch.manual_seed(0)
    experiment = NasExperiment(make_space(), evaluator, strategy)
    experiment.run()
    return experiment, strategy, recorder.samples


def quadrant_images(count: int = 128, size: int = 16, seed: int = 0, labels: bool = True) -> TensorImageDataset:
    """Class k puts a bright patch in quadrant k of channel k % 3: learnable, linearly decodable from random conv
    features, and oriented (so rotation is learnable too)."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 4, (count,), generator=g)
    images = torch.randint(0, 60, (count, 3, size, size), generator=g, dtype=torch.uint8)
    half = size // 2
    for i, label in enumerate(classes.tolist()):
        row, col = divmod(label, 2)
        images[i, label % 3, row * half:(row + 1) * half, col * half:(col + 1) * half] = 250
    return TensorImageDataset(images, classes if labels else None, num_true_classes=4 if labels else None)
