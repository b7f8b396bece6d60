"""Pi-NAS as an NNI strategy: path pairs, the path-wise mean teacher, the queue, learning on CIFAR images, collapse,
exact resume, export on NAS-Bench-201 and ResNeSt, ablations and bad input."""
import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from nni.nas.evaluator.pytorch import Classification, DataLoader
from nni.nas.experiment import NasExperiment
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from nni.nas.oneshot.pytorch.supermodule.sampling import PathSamplingLayer
from pytorch_lightning import Callback

from nni_labelfree.benchmarks.nasbench201 import NB201_LABELS, NB201_OPS
from nni_labelfree.data import TensorImageDataset, image_source
from nni_labelfree.search_spaces import NasBench201Space, ResNeStSpace
from nni_labelfree.search_spaces.resnest import CANDIDATE_NAMES
from nni_labelfree.strategies.pinas import PiNAS
from nni_labelfree.strategies.pinas_loss import _LogSumExpOverBank, info_nce, key_plan
from nni_labelfree.strategies.pinas_parts import KeyQueue, PathPairSampler

pytestmark = [pytest.mark.filterwarnings('ignore:.*self.log.*'), pytest.mark.filterwarnings('ignore:.*nni.trace.*'),
              pytest.mark.usefixtures('one_torch_thread')]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


def _images(n=64, size=16, labels=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return TensorImageDataset(images, torch.randint(0, 4, (n,), generator=g) if labels else None,
                              num_true_classes=4 if labels else None)


class LossLog(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs['loss'] if isinstance(outputs, dict) else outputs))


def _evaluator(data, epochs=1, batch=16, val=None, callbacks=(), **kwargs):
    return Classification(train_dataloaders=DataLoader(data, batch_size=batch, shuffle=True),
                          val_dataloaders=DataLoader(val if val is not None else data, batch_size=batch),
                          num_classes=4, learning_rate=0.01, max_epochs=epochs, enable_progress_bar=False,
                          logger=False, enable_checkpointing=False, enable_model_summary=False,
                          callbacks=list(callbacks), **kwargs)


def _nb201(seed=0):
    torch.manual_seed(seed)
    return NasBench201Space(channels=4, cells_per_stage=1, num_classes=4)


def _resnest(seed=0):
    torch.manual_seed(seed)
    return ResNeStSpace(base_width=4, depths=(1, 1, 1, 1), num_classes=4, stem='cifar')


SMALL = dict(queue_size=64, selection='label_free', search='evolution', held_out_images=32, probe_images=16,
             evolution=dict(population_size=4, top_k=2, num_mutation=2, num_crossover=2, generations=1))


def _driven(strategy, space, data=None):
    """Strategy, supernet and Lightning module wired by hand (no trainer): for single-step checks."""
    net = strategy.mutate_model(space)
    lightning = strategy.mutate_evaluator(_evaluator(data or _images()))
    module = lightning.module
    module.set_model(net)
    module._ensure_state()
    return net, lightning, module


# -- paths ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('make_space', [_nb201, _resnest])
def test_sampled_path_pairs_differ_in_every_choice_and_follow_the_seed(make_space):
    space = make_space()
    mutables = space.simplify()
    filter = getattr(space, 'sample_filter', None)
    sampler, again, other = (PathPairSampler(mutables, seed=s, filter=filter) for s in (3, 3, 4))
    pairs = [sampler.pair() for _ in range(100)]
    for first, second in pairs:
        assert set(first) == set(second) == set(mutables)
        assert all(first[k] != second[k] for k in mutables)  # every choice differs (Pi-NAS: without replacement)
        assert filter is None or (filter(first) and filter(second))
    assert pairs == [again.pair() for _ in range(100)]  # same seed, same pairs: what keeps DDP ranks in step
    assert pairs != [other.pair() for _ in range(100)]
    firsts = {tuple(sorted(first.items())) for first, _ in pairs}
    assert len(firsts) > 50  # and they are spread over the space


def test_key_plan_pairs_every_query_with_another_view():
    for num_views in (2, 4):
        for cross in (True, False):
            view_i, view_j, crossed = key_plan(num_views, cross)
            assert crossed == cross
            key_i, key_j = (view_i, 'i'), (view_j, 'j')
            positive_of_qi, positive_of_qj = (key_j, key_i) if crossed else (key_i, key_j)
            assert positive_of_qi[0] != 0 and positive_of_qj[0] != 1  # q_i reads view 0, q_j view 1
            assert (positive_of_qi[1] == 'j') == cross
    assert key_plan(2, True) == (0, 1, True)  # k_j = T(view 1; P_j) is q_i's positive: other path and view
    with pytest.raises(ValueError, match='2 or 4 views'):
        key_plan(3, True)


# -- the mean teacher ---------------------------------------------------------------------------------------------
def _uses(student, path_i, path_j):
    """How many of the two paths run each student parameter (from the LayerChoice structure, independently of the
    hooks the EMA uses): 0, 1 or 2. The unused classifier counts 0."""
    choices = [(name, m) for name, m in student.named_modules() if isinstance(m, PathSamplingLayer)]
    classifier = next(n for n, m in reversed(list(student.space.named_modules())) if isinstance(m, nn.Linear))
    counts = {}
    for name, _ in student.named_parameters():
        inside = [(m.label, name[len(prefix) + 1:].split('.')[0]) for prefix, m in choices
                  if name.startswith(prefix + '.')]
        if name.startswith(f'space.{classifier}.'):
            counts[name] = 0
        elif inside:
            label, candidate = inside[-1]
            counts[name] = int(str(path_i[label]) == candidate) + int(str(path_j[label]) == candidate)
        else:
            counts[name] = 2
    return counts


@pytest.mark.parametrize('make_space', [_nb201, _resnest])
def test_teacher_follows_the_pathwise_ema_exactly_and_never_gets_gradients(make_space):
    strategy = PiNAS(momentum=0.9, **SMALL)
    student, lightning, module = _driven(strategy, make_space())
    teacher = module.teacher
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    t0 = {k: v.clone() for k, v in teacher.named_parameters()}
    s0 = {k: v.detach().clone() for k, v in student.named_parameters()}
    batch = next(iter(lightning.train_dataloaders))
    loss = module.training_step(batch, 0)
    loss.backward()
    counts = _uses(student, *module.last_paths)
    assert set(counts.values()) == {0, 1, 2}
    m = strategy.momentum
    for name, value in teacher.named_parameters():
        c = counts[name]
        expected = t0[name] * m ** c + s0[name] * (1 - m ** c)  # c EMA steps towards the (unchanged) student
        assert torch.allclose(value, expected, atol=1e-6, rtol=0), (name, c)
        assert not value.requires_grad and value.grad is None
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in module.parameters()}  # no optimiser, no DDP, no Lightning state
    assert any(p.grad is not None for p in student.parameters())


def test_bfloat16_key_passes_give_float32_keys_close_to_the_float32_ones():
    keys = {}
    for precision in ('float32', 'bfloat16'):
        strategy = PiNAS(teacher_precision=precision, **SMALL)
        _, lightning, module = _driven(strategy, _nb201())
        views = module._views(next(iter(lightning.train_dataloaders)))
        path = module.sampler.pair()[0]
        keys[precision] = module._key(path, views[:, 0])
        assert all(p.dtype == torch.float32 for p in module.teacher.parameters())  # the EMA stays float32
    fp32, bf16 = keys['float32'], keys['bfloat16']
    assert bf16.dtype == torch.float32 and torch.allclose(bf16.norm(dim=1), torch.ones(len(bf16)), atol=1e-5)
    cosines = (fp32 * bf16).sum(1)
    assert not torch.equal(fp32, bf16)  # the key pass did run in reduced precision
    assert cosines.min() > 0.99, cosines.min()


# -- the queue ------------------------------------------------------------------------------------------------------
def test_key_queue_is_first_in_first_out():
    queue = KeyQueue(10, 4, seed=0)
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(10)) and queue.filled == 0
    batches = [torch.randn(3, 4, generator=torch.Generator().manual_seed(k)) for k in range(5)]
    for keys in batches:
        queue.enqueue(keys)
    assert queue.size == 10 and queue.pointer == 5 and queue.filled == 10
    assert torch.equal(queue.ordered(), torch.cat(batches)[-10:])  # the newest 10, oldest first
    with pytest.raises(ValueError, match='does not fit'):
        queue.enqueue(torch.randn(11, 4))


def test_key_queue_writes_in_place_only_when_asked():
    batches = [torch.randn(4, 3, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    copied, written = KeyQueue(6, 3, seed=1), KeyQueue(6, 3, seed=1)
    storage = written.keys.data_ptr()
    for keys in batches:
        held = copied.keys
        copied.enqueue(keys)
        assert copied.keys is not held  # a tensor a loss still holds for its backward pass is left as it was
        written.enqueue(keys, in_place=True)
    assert written.keys.data_ptr() == storage
    assert torch.equal(written.keys, copied.keys) and written.pointer == copied.pointer == 4
    assert torch.equal(written.ordered(), torch.cat(batches)[-6:])


def test_bfloat16_options_warn_only_on_a_cpu_that_would_emulate_bfloat16():
    from nni_labelfree.strategies.pinas_module import slow_bfloat16_note
    cpu, gpu = torch.device('cpu'), torch.device('cuda')
    note = slow_bfloat16_note(cpu, 'float32', 'bfloat16', native=lambda: False)
    assert "queue_precision='bfloat16'" in note and 'teacher_precision' not in note and 'Use float32' in note
    assert "teacher_precision='bfloat16' and queue_precision='bfloat16'" in slow_bfloat16_note(
        cpu, 'bfloat16', 'bfloat16', native=lambda: False)
    assert slow_bfloat16_note(cpu, 'bfloat16', 'bfloat16', native=lambda: True) is None  # AVX512-BF16 / AMX
    assert slow_bfloat16_note(gpu, 'bfloat16', 'float32', native=lambda: False) is None  # not a CPU question
    assert slow_bfloat16_note(cpu, 'float32', 'float32', native=lambda: False) is None
    assert slow_bfloat16_note(cpu, 'float16', 'float32', native=lambda: False) is None  # float16: meant for GPUs


def test_a_search_with_bfloat16_on_an_emulating_cpu_warns_and_still_trains(tmp_path, monkeypatch):
    from nni_labelfree.strategies import pinas_module
    monkeypatch.setattr(pinas_module, 'cpu_has_native_bfloat16', lambda: False)
    with pytest.warns(RuntimeWarning, match="queue_precision='bfloat16' on a CPU without native bfloat16"):
        module, _ = _fit_noting_the_queue(tmp_path, queue_precision='bfloat16')
    assert module.steps == 4


def test_bfloat16_bank_log_sum_exp_sums_in_float32_and_returns_float32():
    generator = torch.Generator().manual_seed(3)
    query = (torch.nn.functional.normalize(torch.randn(6, 16, generator=generator), dim=1) / 0.2).requires_grad_()
    bank = torch.nn.functional.normalize(torch.randn(4096, 16, generator=generator), dim=1).bfloat16()
    bank.requires_grad_()
    lse, top = _LogSumExpOverBank.apply(query, bank)
    assert lse.dtype == top.dtype == torch.float32
    # reference: float64 over the bfloat16-rounded operands. Measured over 20 draws: at most 4e-4 off with the sums
    # in float32, at least 8e-3 with the exponentials summed in bfloat16
    exact = torch.logsumexp(query.detach().bfloat16().double() @ bank.detach().double().t(), 1)
    assert (lse.double() - exact).abs().max() < 2e-3
    grad_query, grad_bank = torch.autograd.grad(lse.sum(), (query, bank))
    assert grad_query.dtype == torch.float32 and grad_bank.dtype == torch.bfloat16


def test_bfloat16_queue_stores_bfloat16_keys_and_gives_float32_loss_and_gradient_close_to_float32():
    generator = torch.Generator().manual_seed(2)

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=1)
    queue = KeyQueue(512, 16, seed=0, dtype=torch.bfloat16)
    queue.enqueue(unit(8, 16), in_place=True)
    assert queue.keys.dtype == torch.bfloat16
    query, key = unit(8, 16).requires_grad_(), unit(8, 16)
    key[:4] = query[:4].detach() + 0.1 * key[:4]  # some positives the negatives cannot all beat
    results = {}
    for name, bank in (('float32', queue.keys.float()), ('bfloat16', queue.keys)):
        loss, accuracy = info_nce(query, key, bank, 0.2)
        grad, = torch.autograd.grad(loss, query)
        assert loss.dtype == grad.dtype == torch.float32
        results[name] = loss, accuracy, grad
    (loss32, acc32, grad32), (loss16, acc16, grad16) = results['float32'], results['bfloat16']
    assert not torch.equal(grad16, grad32)  # the products did run in bfloat16
    assert abs(float(loss16 - loss32)) < 1e-2 * float(loss32)
    assert float((grad16 - grad32).norm() / grad32.norm()) < 2e-2
    assert float(acc16) == float(acc32)


def test_training_steps_enqueue_the_mean_key_of_each_step():
    strategy = PiNAS(**SMALL)
    _, lightning, module = _driven(strategy, _nb201())
    seen = []
    enqueue = module.queue.enqueue
    module.queue.enqueue = lambda keys: (seen.append(keys.clone()), enqueue(keys))
    for step, batch in zip(range(3), lightning.train_dataloaders):
        module.training_step(batch, step)
    assert module.queue.pointer == 48 and module.queue.filled == 48 and len(seen) == 3
    assert torch.equal(module.queue.ordered()[-48:], torch.cat(seen))
    norms = seen[0].norm(dim=1)  # the unnormalised mean of two unit keys
    assert (norms <= 1 + 1e-6).all() and (norms < 1 - 1e-4).any()


# -- learning and collapse on CIFAR images ------------------------------------------------------------------------
def _cifar_run(shared_data, **overrides):
    data = image_source('imagefolder', root=shared_data / 'images' / 'cifar10_jpeg.tar.gz', split='train',
                        num_images=64, image_size=16)
    log = LossLog()
    # momentum 0.99: over 80 steps the paper's 0.999 would leave the teacher at ~85% of its random start.
    strategy = PiNAS(**{**SMALL, 'momentum': 0.99, **overrides})
    torch.manual_seed(0)
    NasExperiment(NasBench201Space(channels=4, cells_per_stage=1), _evaluator(data, epochs=20, callbacks=[log]),
                  strategy).run()
    return strategy.oneshot_module, log.losses


@pytest.fixture(scope='module')
def cifar_run():
    if not SHARED_DATA.is_dir():
        pytest.skip(f'test data folder {SHARED_DATA} is absent (it ships beside the repository)')
    return _cifar_run(SHARED_DATA)


def test_loss_is_finite_and_falls_on_cifar_images(cifar_run):
    """80 steps on 64 CIFAR-10 JPEGs: once the queue holds real keys (step 4), the InfoNCE loss must fall."""
    module, losses = cifar_run
    assert len(losses) == 80 and all(math.isfinite(x) for x in losses)
    chance = 2 * math.log(64 + 1)  # two terms, one positive among 64 queued negatives
    early, late = sum(losses[8:24]) / 16, sum(losses[-16:]) / 16
    assert early - late > 0.2 and late < chance - 0.4, (early, late, chance)
    assert not module.collapse.collapsed and module.history[-1]['embedding_spread'] > 0.1
    similarity = module.history[-1]['cross_path_similarity']
    assert -1.0 <= similarity <= 1.0 and module.similarity_matrix.shape == (4, 4)


def test_collapse_is_detected_without_negatives(shared_data):
    with pytest.warns(RuntimeWarning, match='collapsed.*negatives=False'):
        module, losses = _cifar_run(shared_data, negatives=False)
    assert module.collapse.collapsed and module.history[-1]['collapsed'] == 1.0
    assert module.history[-1]['embedding_spread'] < 0.05 and losses[-1] < 0.05  # consistent, but constant


# -- resume ---------------------------------------------------------------------------------------------------------
class SaveAtEpochEnd(Callback):
    """Saves a checkpoint in on_train_epoch_end, as a search runner's callback does (before the module's hook)."""

    def __init__(self, path):
        self.path = path

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.save_checkpoint(str(self.path), weights_only=False)


def _fit(epochs, ckpt_path=None, save_to=None):
    strategy = PiNAS(**SMALL)
    net = strategy.mutate_model(_nb201(seed=1))
    callbacks = [SaveAtEpochEnd(save_to)] if save_to is not None else []
    lightning = strategy.mutate_evaluator(_evaluator(_images(32), epochs=epochs, batch=8, callbacks=callbacks))
    if ckpt_path is not None:
        lightning.fit_kwargs['ckpt_path'] = str(ckpt_path)
    lightning.evaluate(net)
    return lightning.module


class SaveAfterBatch(Callback):
    """Saves a checkpoint at one batch's end, before the module's own on_train_batch_end runs; notes where the
    queue's storage is at every batch's end."""

    def __init__(self, path, batch):
        self.path, self.batch, self.storage = path, batch, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.storage.append(pl_module.queue.keys.data_ptr())
        if batch_idx == self.batch:
            trainer.save_checkpoint(str(self.path), weights_only=False)


def _fit_noting_the_queue(tmp_path, save_after=None, trainer=None, **overrides):
    strategy = PiNAS(**{**SMALL, **overrides})
    net = strategy.mutate_model(_nb201(seed=1))
    saver = SaveAfterBatch(tmp_path / 'batch.ckpt', save_after)
    lightning = strategy.mutate_evaluator(_evaluator(_images(32), epochs=1, batch=8, callbacks=[saver],
                                                     **(trainer or {})))
    lightning.evaluate(net)
    return lightning.module, saver


@pytest.mark.parametrize('accumulate', [1, 2])
def test_lightning_steps_write_the_queue_in_place(tmp_path, accumulate):
    module, saver = _fit_noting_the_queue(tmp_path, trainer={'accumulate_grad_batches': accumulate})
    assert module.trainer.global_step == 4 // accumulate  # the accumulation did take effect
    assert module.steps == 4 and module.queue.pointer == 32 and module.queue.filled == 32
    assert len(saver.storage) == 4 and set(saver.storage) == {module.queue.keys.data_ptr()}  # never copied


def test_a_checkpoint_saved_at_a_batch_end_holds_that_batchs_keys(tmp_path):
    module, _ = _fit_noting_the_queue(tmp_path, save_after=1)
    state = torch.load(tmp_path / 'batch.ckpt', weights_only=False)['pinas']['queue']
    assert state['pointer'] == 16 and state['filled'] == 16  # both batches' keys, the second's included
    assert torch.equal(state['keys'][8:16], module.queue.keys[8:16])  # and the keys written then are kept
    assert module.queue.pointer == 32 and module.steps == 4


def test_a_bfloat16_queue_trains_checkpoints_and_resumes_in_bfloat16(tmp_path):
    module, _ = _fit_noting_the_queue(tmp_path, save_after=3, queue_precision='bfloat16')
    assert module.queue.keys.dtype == torch.bfloat16 and module.queue.pointer == 32
    history = module.history[-1]
    assert math.isfinite(history['contrastive_loss']) and history['contrastive_loss'] > 0
    state = torch.load(tmp_path / 'batch.ckpt', weights_only=False)
    assert state['pinas']['queue']['keys'].dtype == torch.bfloat16
    assert torch.equal(state['pinas']['queue']['keys'], module.queue.keys)
    fresh = PiNAS(**{**SMALL, 'queue_precision': 'bfloat16'})
    _, _, resumed = _driven(fresh, _nb201(seed=1))
    resumed.on_load_checkpoint(state)
    assert resumed.queue.keys.dtype == torch.bfloat16 and torch.equal(resumed.queue.keys, module.queue.keys)
    assert resumed.queue.keys.data_ptr() != state['pinas']['queue']['keys'].data_ptr()  # a copy, written later


def test_a_resumed_search_continues_exactly(tmp_path):
    straight = _fit(2)
    _fit(1, save_to=tmp_path / 'epoch1.ckpt')
    state = torch.load(tmp_path / 'epoch1.ckpt', weights_only=False)['pinas']
    assert {'teacher', 'queue', 'sampler', 'history'} <= set(state) and len(state['history']) == 1
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # Pi-NAS's own state is plain tensors and values
    resumed = _fit(2, ckpt_path=tmp_path / 'epoch1.ckpt')
    for name, value in straight.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[name]), name
    for name, value in straight.teacher.state_dict().items():
        assert torch.equal(value, resumed.teacher.state_dict()[name]), name
    assert torch.equal(straight.queue.keys, resumed.queue.keys) and straight.queue.pointer == resumed.queue.pointer
    assert straight.sampler.pair() == resumed.sampler.pair()
    assert straight.history == resumed.history and straight.steps == resumed.steps == 8


# -- experiments and export ---------------------------------------------------------------------------------------
def test_nas_experiment_on_nasbench201_selects_by_linear_evaluation():
    strategy = PiNAS(**{**SMALL, 'selection': 'auto', 'linear_eval': dict(steps=10, bn_batches=1, epoch_steps=5),
                        'linear_eval_every': 1})
    torch.manual_seed(0)
    experiment = NasExperiment(_nb201(), _evaluator(_images(), epochs=1, val=_images(32, seed=1)), strategy)
    experiment.run()
    top = experiment.export_top_models(top_k=3, formatter='dict')
    assert len(top) == 3 and len({tuple(sorted(a.items())) for a in top}) == 3
    for arch in top:
        assert set(arch) == set(NB201_LABELS) and set(arch.values()) <= set(NB201_OPS)
    module = strategy.oneshot_module
    assert module.selection_kind == 'linear_eval'
    fitness = [f for _, f in module.search_result]
    assert fitness == sorted(fitness, reverse=True) and all(0.0 <= f <= 1.0 for f in fitness)
    assert 0.0 <= module.history[0]['linear_eval_acc'] <= 1.0


def test_label_free_selection_on_resnest():
    strategy = PiNAS(**{**SMALL, 'selection': 'auto'})
    experiment = NasExperiment(_resnest(), _evaluator(_images(labels=False), epochs=1), strategy)
    experiment.run()
    [arch] = experiment.export_top_models(formatter='dict')
    assert set(arch) == {f'block{i}' for i in range(4)} and set(arch.values()) <= set(CANDIDATE_NAMES)
    module = strategy.oneshot_module
    assert module.selection_kind == 'label_free' and module.search_result[0][1] <= 0.0  # minus an InfoNCE loss
    frozen = experiment.export_top_models(formatter='instance')[0]
    assert frozen(torch.randn(2, 3, 16, 16)).shape == (2, 4)  # the exported network keeps its classifier


class Chain(ModelSpace):
    """No ``features()``: the head reads the input of the final nn.Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = LayerChoice({'conv3': nn.Conv2d(8, 8, 3, padding=1), 'conv1': nn.Conv2d(8, 8, 1),
                                  'pool': nn.AvgPool2d(3, 1, 1)}, label='block')
        self.norm = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.norm(self.block(torch.relu(self.stem(x))))).mean((2, 3)))


def test_a_space_without_features_uses_the_classifier_input():
    strategy = PiNAS(**{**SMALL, 'search': 'exhaustive'})
    experiment = NasExperiment(Chain(), _evaluator(_images(32), epochs=1), strategy)
    experiment.run()
    network = strategy.oneshot_module.network
    assert not network.uses_features and network.feature_dim == 8
    assert network.embed(torch.randn(3, 3, 16, 16)).shape == (3, 8)
    top = experiment.export_top_models(top_k=3, formatter='dict')
    assert sorted(a['block'] for a in top) == ['conv1', 'conv3', 'pool']  # all three ranked


@pytest.mark.parametrize('overrides', [dict(cross_path=False), dict(mean_teacher=False), dict(num_views=4),
                                       dict(key_bn_groups=1)])
def test_ablations_train(overrides):
    strategy = PiNAS(**{**SMALL, **overrides})
    _, lightning, module = _driven(strategy, _nb201())
    batch = next(iter(lightning.train_dataloaders))
    assert batch[0].shape[1] == strategy.num_views
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.requires_grad
    assert (module.teacher is None) == (not strategy.mean_teacher)


# -- bad input ------------------------------------------------------------------------------------------------------
class OnePath(ModelSpace):
    def __init__(self):
        super().__init__()
        self.conv = LayerChoice([nn.Conv2d(3, 4, 1)], label='conv')
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


class NoLinear(ModelSpace):
    def __init__(self):
        super().__init__()
        self.conv = LayerChoice([nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 3, padding=1)], label='conv')

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(ValueError, match='two different paths.*at least two candidates'):
        PiNAS().mutate_model(OnePath())
    with pytest.raises(ValueError, match='nn.Linear'):
        PiNAS().mutate_model(NoLinear())
    with pytest.raises(ValueError, match='queue_size=8 is smaller than the batch of 16'):
        _driven(PiNAS(queue_size=8), _nb201())
    with pytest.raises(ValueError, match='at least 2 images'):
        strategy = PiNAS(**SMALL)
        strategy.mutate_model(_nb201())
        strategy.mutate_evaluator(_evaluator(_images(), batch=1))
    for kwargs, message in ((dict(temperature=0), 'temperature'), (dict(num_views=3), 'num_views'),
                            (dict(selection='best'), 'selection'), (dict(momentum=1.5), 'momentum'),
                            (dict(key_bn_groups=0), 'key_bn_groups'),
                            (dict(teacher_precision='int8'), 'teacher_precision=.int8. is not one of'),
                            (dict(queue_precision='float16'), 'queue_precision=.float16. is not one of')):
        with pytest.raises(ValueError, match=message):
            PiNAS(**kwargs)
    strategy = PiNAS(**{**SMALL, 'selection': 'linear_eval'})
    NasExperiment(_nb201(), _evaluator(_images(labels=False), epochs=1), strategy).run()
    with pytest.raises(ValueError, match='label_free'):
        strategy.oneshot_module.export()


# -- DDP: run as a script (python tests/test_pinas.py OUTPUT), Lightning relaunches it for rank 1 ---------------------
def _ddp_main(output: str) -> int:
    import hashlib
    import json
    import warnings as _warnings
    _warnings.filterwarnings('ignore')
    torch.set_num_threads(1)
    steps = []

    class Recorder(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            steps.append([dict(p) for p in pl_module.last_paths])

    def digest(tensors):
        return hashlib.sha1(b''.join(t.detach().cpu().numpy().tobytes() for t in tensors)).hexdigest()

    strategy = PiNAS(**{**SMALL, 'seed': 7, 'queue_size': 48})
    evaluator = _evaluator(_images(64, labels=False), epochs=2, batch=8, callbacks=[Recorder()], accelerator='cpu',
                           devices=2, strategy='ddp_find_unused_parameters_true')
    net = strategy.mutate_model(_nb201())
    lightning = strategy.mutate_evaluator(evaluator)
    lightning.evaluate(net)
    module = lightning.module
    record = {'rank': lightning.trainer.global_rank, 'steps': steps, 'arch': module.export(),
              'queue': digest([module.queue.keys]), 'pointer': module.queue.pointer,
              'teacher': digest(list(module.teacher.parameters())), 'student': digest(list(net.parameters()))}
    (Path(output) / f'rank{record["rank"]}.json').write_text(json.dumps(record))
    return 0


@pytest.mark.slow  # two processes (about 30-60 s on a busy 2-core machine)
def test_ddp_ranks_train_the_same_paths_and_keep_the_same_teacher_and_queue(tmp_path):
    import json
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_PORT')}
    env['OMP_NUM_THREADS'] = '1'
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(tmp_path)], env=env, timeout=600,
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1)]
    assert len(ranks[0]['steps']) == len(ranks[1]['steps']) == 2 * 64 // 2 // 8
    assert ranks[0]['steps'] == ranks[1]['steps']  # the same path pair at every step
    for key in ('arch', 'queue', 'pointer', 'teacher', 'student'):
        assert ranks[0][key] == ranks[1][key], key
    assert ranks[0]['pointer'] == (8 * 2 * 8) % 48  # both ranks' keys enqueued: 2 x 8 per step, 8 steps


if __name__ == '__main__':
    import sys
    raise SystemExit(_ddp_main(sys.argv[1]))


def test_info_nce_equals_the_cross_entropy_over_positive_and_queue_logits():
    generator = torch.Generator().manual_seed(0)

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=1)
    query, key, queue = unit(6, 8).requires_grad_(), unit(6, 8), unit(50, 8)
    key[:3] = query[:3].detach()  # three positives beat every negative, for the accuracy
    loss, accuracy = info_nce(query, key, queue, 0.2)
    logits = torch.cat([(query * key).sum(1, keepdim=True), query @ queue.t()], dim=1) / 0.2
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(6, dtype=torch.long))
    assert torch.allclose(loss, expected, atol=1e-6)
    assert float(accuracy) == float((logits.argmax(1) == 0).float().mean()) >= 0.5
    grad, = torch.autograd.grad(loss, query)
    expected_grad, = torch.autograd.grad(expected, query)
    assert torch.allclose(grad, expected_grad, atol=1e-6)


def test_fused_queue_log_sum_exp_has_the_exact_gradient_for_queries_and_bank():
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    bank = torch.randn(9, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    lse, top = _LogSumExpOverBank.apply(query, bank)
    assert torch.allclose(lse, torch.logsumexp(query @ bank.t(), 1))
    assert torch.equal(top, (query @ bank.t()).amax(1)) and not top.requires_grad
    assert torch.autograd.gradcheck(lambda q, b: _LogSumExpOverBank.apply(q, b)[0], (query, bank))
