"""Two-process DDP on CPU (gloo): every rank trains the same paths on its own shard and exports the same architecture.

Run as a script (``python tests/test_ddp.py OUTPUT``), this file is one search through the search runner under
``lightning_strategy='ddp', devices=2``: Lightning relaunches the same command for rank 1, and each rank writes
``rank{r}.json`` with its exported architecture, its ranking, the path it sampled at every step and a fingerprint of
every image it trained on. The tests start that script in a subprocess (its own process group, so a timeout can stop
both ranks) and compare the two files.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300
EPOCHS, NUM_IMAGES, BATCH = 2, 64, 16
FLAGS = {'data': 'noise', 'channels': 4, 'cells_per_stage': 1, 'num_images': NUM_IMAGES, 'batch_size': BATCH,
         'epochs': EPOCHS, 'seed': 5, 'accelerator': 'cpu', 'devices': 2, 'lightning_strategy': 'ddp'}
# UnNAS (DARTS on rotation): NNI's own DDP DARTS exports a different architecture per rank (microsoft/nni#5013).
UNNAS_FLAGS = {**FLAGS, 'strategy': 'unnas', 'task': 'rotation', 'num_images': 2 * NUM_IMAGES}
# SGAS on unreal data (noise, random labels): an edge decided at the end of every epoch, from the synchronised alphas.
SGAS_FLAGS = {**FLAGS, 'strategy': 'unrealnas', 'unreal_data': 'rlrn', 'algorithm': 'sgas', 'unreal_classes': 4,
              'num_images': 2 * NUM_IMAGES, 'decision_warmup': 0, 'decision_freq': 1, 'epochs': 6}
SCRIPT_FLAGS = {'unnas': UNNAS_FLAGS, 'sgas': SGAS_FLAGS}


# --- the script side: one DDP search, one record per rank --------------------------------------------------------
def _recorder():
    import pytorch_lightning as pl

    class PathRecorder(pl.Callback):
        """The sampled path and image fingerprints of every training step on this rank."""

        def __init__(self):
            self.rank, self.steps = None, []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.rank = trainer.global_rank
            inputs = batch['train'][0] if isinstance(batch, dict) else batch[0]  # UnNAS: {'train', 'val'} halves
            images = [hashlib.sha1(image.numpy().tobytes()).hexdigest()[:16] for image in inputs]
            path = dict(getattr(pl_module, 'last_sample', None) or {})
            decisions = getattr(pl_module, 'decisions', None)  # SGAS: the edges decided so far
            self.steps.append({'epoch': trainer.current_epoch, 'path': path, 'images': images,
                               'alphas': _alpha_digest(pl_module),
                               'decided': dict(decisions.decided) if decisions is not None else None})
    return PathRecorder()


def _alpha_digest(module) -> str | None:
    alphas = [p.detach().numpy().tobytes() for n, p in module.named_parameters() if n.endswith('_arch_alpha')]
    return hashlib.sha1(b''.join(alphas)).hexdigest() if alphas else None


def main(argv: list[str]) -> int:
    warnings.filterwarnings('ignore')
    from nni_labelfree.experiment.config import resolve_config
    from nni_labelfree.experiment.search import run_search
    output = Path(argv[0])
    flags = SCRIPT_FLAGS[argv[1]] if argv[1:] else FLAGS
    config = resolve_config(flags, {'output_dir': str(output)})
    recorder = _recorder()
    result = run_search(config, output, extra_callbacks=[recorder])
    record = {'rank': recorder.rank, 'arch': result['arch'], 'angle': result.get('angle'), 'top': result.get('top'),
              'steps': recorder.steps}
    (output / f'rank{recorder.rank}.json').write_text(json.dumps(record))
    return 0


# --- the test side ----------------------------------------------------------------------------------------------
def _run_script(output: Path, *extra: str) -> tuple[dict, dict]:
    """Run this file as a 2-rank DDP search into ``output``; the two ranks' records."""
    output.mkdir(parents=True, exist_ok=True)
    log = output.parent / f'{output.name}.log'
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_PORT')}
    with open(log, 'wb') as sink:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(output), *extra], cwd=REPO, env=env,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 60  # rank 1 may still be exporting when rank 0 exits
            while not (output / 'rank1.json').exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            if proc.poll() is None or not (output / 'rank1.json').exists():
                try:  # a hung run: stop the group this test started (rank 0 and Lightning's rank 1)
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=60)
    text = log.read_text(errors='replace')
    assert proc.returncode == 0, text[-4000:]
    files = [output / f'rank{r}.json' for r in (0, 1)]
    assert all(f.exists() for f in files), text[-4000:]
    assert 'Starting with 2 processes' in text and 'distributed_backend=gloo' in text
    return tuple(json.loads(f.read_text()) for f in files)


@pytest.fixture(scope='module')
def ranks(tmp_path_factory) -> tuple[Path, dict, dict]:
    output = tmp_path_factory.mktemp('ddp') / 'out'
    return output, *_run_script(output)


def test_both_ranks_export_the_same_architecture(ranks):
    output, rank0, rank1 = ranks
    assert (rank0['rank'], rank1['rank']) == (0, 1)
    assert rank0['arch'] == rank1['arch'] and rank0['angle'] == rank1['angle']
    assert rank0['top'] == rank1['top']  # the whole top-10 ranking, angles bit for bit
    written = json.loads((output / 'arch.json').read_text())
    assert written['arch'] == rank0['arch'] and written['seed'] == FLAGS['seed']


def test_every_rank_samples_the_same_path_at_every_step(ranks):
    _, rank0, rank1 = ranks
    steps_per_epoch = NUM_IMAGES // 2 // BATCH
    assert len(rank0['steps']) == len(rank1['steps']) == EPOCHS * steps_per_epoch
    assert [s['path'] for s in rank0['steps']] == [s['path'] for s in rank1['steps']]
    assert len({json.dumps(s['path'], sort_keys=True) for s in rank0['steps']}) > 1  # and paths do vary


def test_each_rank_trains_on_its_own_shard_of_the_shuffled_data(ranks):
    _, rank0, rank1 = ranks
    orders = []
    for epoch in range(EPOCHS):
        seen = [[i for s in r['steps'] if s['epoch'] == epoch for i in s['images']] for r in (rank0, rank1)]
        assert len(seen[0]) == len(seen[1]) == NUM_IMAGES // 2
        assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == NUM_IMAGES
        orders.append(seen[0])
    assert orders[0] != orders[1]  # reshuffled every epoch


def test_only_rank_zero_writes_the_artifacts(ranks):
    output, _, _ = ranks
    names = sorted(p.name for p in (output / 'checkpoints').iterdir())
    assert names == [f'search_epoch{e:04d}.ckpt' for e in range(1, EPOCHS + 1)] + ['supernet_final.pt',
                                                                                  'supernet_init.pt']
    assert len(json.loads((output / 'metrics.json').read_text())) == EPOCHS


def test_unnas_ranks_keep_identical_alphas_and_export_the_same_genotype(tmp_path):
    rank0, rank1 = _run_script(tmp_path / 'unnas', 'unnas')
    assert rank0['arch'] == rank1['arch']
    assert [s['alphas'] for s in rank0['steps']] == [s['alphas'] for s in rank1['steps']]  # after every step
    assert len({s['alphas'] for s in rank0['steps']}) > 1  # and the alphas do move
    for epoch in range(EPOCHS):  # each rank reads its own half of each shuffled half
        seen = [{i for s in r['steps'] if s['epoch'] == epoch for i in s['images']} for r in (rank0, rank1)]
        assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_sgas_ranks_decide_the_same_edges_from_identical_alphas(tmp_path):
    rank0, rank1 = _run_script(tmp_path / 'sgas', 'sgas')
    assert rank0['arch'] == rank1['arch']
    assert [s['alphas'] for s in rank0['steps']] == [s['alphas'] for s in rank1['steps']]
    assert [s['decided'] for s in rank0['steps']] == [s['decided'] for s in rank1['steps']]
    per_epoch = [len(next(s['decided'] for s in rank0['steps'] if s['epoch'] == e)) for e in range(6)]
    assert per_epoch[0] == 0 and per_epoch[-1] >= 5 and per_epoch == sorted(per_epoch)  # one more edge each epoch
    for edge, op in rank0['steps'][-1]['decided'].items():  # and the exported architecture keeps every decision
        assert rank0['arch'][edge] == op or op == 'none'


@pytest.mark.slow  # a second 2-process search (about 20 s on a busy 2-core machine)
def test_a_ddp_search_resumes_exactly_on_both_ranks(ranks, tmp_path):
    output, *first = ranks
    resumed = tmp_path / 'resumed'
    shutil.copytree(output, resumed, ignore=shutil.ignore_patterns('rank*.json', 'arch.json', 'metrics.json'))
    (resumed / 'checkpoints' / f'search_epoch{EPOCHS:04d}.ckpt').unlink()  # as if killed during the last epoch
    again = _run_script(resumed)
    for before, after in zip(first, again):
        assert after['arch'] == before['arch'] and after['top'] == before['top']
        assert after['steps'] == [s for s in before['steps'] if s['epoch'] == EPOCHS - 1]  # same paths, same shard
    assert json.loads((resumed / 'metrics.json').read_text()) == json.loads((output / 'metrics.json').read_text())


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
