"""Every shipped nnictl YAML is valid for NNI and for our trial entry point."""
from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest

from nni_labelfree.data import list_image_sources
from nni_labelfree.experiment.config import SearchConfig, flatten_parameter_groups, resolve_config
from nni_labelfree.experiment.launcher import load_experiment_config
from nni_labelfree.experiment.trial import parse_set_flags
from nni_labelfree.search_spaces import list_spaces

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / 'experiment_configs').glob('*.yml'))
CONFIGS = [p for p in CONFIGS if not p.name.startswith('retrain_')]  # retrain trials: tests/test_retrain.py
CLUSTER_EXAMPLES = [p for p in CONFIGS if p.name.endswith('_example.yml')]  # remote/kubeflow: tested at the end
CONFIGS = [p for p in CONFIGS if p not in CLUSTER_EXAMPLES]
TRIAL_PREFIX = ['python3', '-m', 'nni_labelfree.experiment.trial']
VALID_KEYS = {f.name for f in dataclasses.fields(SearchConfig)}


@pytest.fixture(autouse=True)
def _reset_nni_config_base_path():
    """NNI's ``ConfigBase.load`` leaves a module-global base path set when the YAML is rejected, and every later
    load then fails an assertion (see test_a_rejected_config_does_not_break_later_loads); keep tests independent."""
    from nni.experiment.config import utils
    utils.unset_base_path()
    yield
    utils.unset_base_path()


def set_flags_of(trial_command: str) -> dict:
    """The ``--set key=value`` pairs of a trial command, parsed like the trial entry point does."""
    tokens = shlex.split(trial_command)
    assert tokens[:3] == TRIAL_PREFIX, f'trialCommand must start with {" ".join(TRIAL_PREFIX)}: {trial_command!r}'
    pairs, rest = [], tokens[3:]
    while rest:
        token = rest.pop(0)
        if token.startswith('--set='):
            pairs.append(token[len('--set='):])
        elif token == '--set' and rest:
            pairs.append(rest.pop(0))
        else:
            raise AssertionError(f'unexpected token {token!r} in trialCommand {trial_command!r}')
    return parse_set_flags(pairs)


def search_space_layers(search_space: dict) -> list[dict]:
    """One single-key parameter layer per value a tuner may choose."""
    layers = []
    for key, spec in (search_space or {}).items():
        assert isinstance(spec, dict) and '_type' in spec, f'searchSpace.{key} must be {{_type, _value}}'
        assert spec['_type'] == 'choice', f'searchSpace.{key}: only choice is used by the shipped (GridSearch) configs'
        assert spec['_value'], f'searchSpace.{key} has no values'
        layers += [{key: value} for value in spec['_value']]
    return layers


def test_there_are_shipped_configs():
    names = {p.name for p in CONFIGS}
    assert {'quickstart.yml', 'rlnas_nasbench201.yml'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_config_loads_with_nni_schema_validation(path):
    config = load_experiment_config(path)
    assert config.trial_concurrency >= 1
    assert config.training_service.platform == 'local'
    assert config.tuner is not None and config.tuner.name


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_config_runs_our_trial_entry_point_from_the_repository_root(path):
    config = load_experiment_config(path)
    assert shlex.split(config.trial_command)[:3] == TRIAL_PREFIX
    code_dir = Path(config.canonical_copy().trial_code_directory)
    assert code_dir.resolve() == REPO, f'trialCodeDirectory resolves to {code_dir}, expected the repository root'


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_every_set_flag_and_search_space_value_resolves(path):
    config = load_experiment_config(path)
    flags = set_flags_of(config.trial_command)
    assert flags, 'expected --set flags in the trialCommand'
    assert set(flags) <= VALID_KEYS, sorted(set(flags) - VALID_KEYS)
    resolve_config(flags)
    layers = search_space_layers(config.search_space)
    assert {k for layer in layers for k in flatten_parameter_groups(layer)} <= VALID_KEYS  # groups: nested keys
    for layer in layers:
        resolved = resolve_config(flags, flatten_parameter_groups(layer))  # the order trial.run_trial uses
        assert resolved.data in list_image_sources(), (layer, resolved.data)
        assert resolved.space in list_spaces(), (layer, resolved.space)


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_search_space_keys_are_not_also_fixed_by_set_flags(path):
    """A tuner-chosen key also fixed by --set would be silently overridden by the tuner (params win)."""
    config = load_experiment_config(path)
    tuned = {k for layer in search_space_layers(config.search_space or {}) for k in flatten_parameter_groups(layer)}
    assert not set(set_flags_of(config.trial_command)) & tuned


def test_set_flag_checker_catches_a_bad_key():
    with pytest.raises(ValueError, match='epochz'):
        resolve_config(set_flags_of('python3 -m nni_labelfree.experiment.trial --set epochs=2 --set=epochz=3'))
    with pytest.raises(AssertionError, match='trialCommand must start'):
        set_flags_of('python -m nni_labelfree.experiment.trial --set epochs=2')
    with pytest.raises(AssertionError, match='unexpected token'):
        set_flags_of('python3 -m nni_labelfree.experiment.trial --epochs 2')


# --- invalid configs --------------------------------------------------------------------------------------------
_VALID_YAML = """\
experimentName: tiny
searchSpace:
  seed: {_type: choice, _value: [0]}
trialCommand: python3 -m nni_labelfree.experiment.trial --set epochs=1
trialCodeDirectory: .
trialConcurrency: 1
tuner: {name: GridSearch}
trainingService: {platform: local}
"""


def test_a_minimal_valid_config_loads(tmp_path):
    path = tmp_path / 'ok.yml'
    path.write_text(_VALID_YAML)
    assert load_experiment_config(path).trial_concurrency == 1


def test_an_unknown_top_level_key_is_rejected_naming_it(tmp_path):
    path = tmp_path / 'bad.yml'
    path.write_text(_VALID_YAML.replace('tuner:', 'tunerr:'))
    with pytest.raises(ValueError) as info:
        load_experiment_config(path)
    message = str(info.value)
    assert str(path) in message and 'tunerr' in message and 'not a valid NNI experiment config' in message


def test_a_bad_value_is_rejected(tmp_path):
    path = tmp_path / 'bad.yml'
    path.write_text(_VALID_YAML.replace('trialConcurrency: 1', 'trialConcurrency: many'))
    with pytest.raises(ValueError, match='not a valid NNI experiment config'):
        load_experiment_config(path)


def test_a_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / 'list.yml'
    path.write_text('- trialCommand: python3 x.py\n')
    with pytest.raises(ValueError, match='must hold a YAML mapping'):
        load_experiment_config(path)


def test_a_missing_config_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_experiment_config(tmp_path / 'missing.yml')


def test_a_rejected_config_does_not_break_later_loads(tmp_path):
    bad, good = tmp_path / 'bad.yml', tmp_path / 'good.yml'
    bad.write_text(_VALID_YAML.replace('tuner:', 'tunerr:'))
    good.write_text(_VALID_YAML)
    with pytest.raises(ValueError):
        load_experiment_config(bad)
    assert load_experiment_config(good).trial_concurrency == 1


# --- remote and cluster examples (no cluster needed: NNI's schema with the placeholders filled) ----------------
def test_there_are_remote_and_kubeflow_examples():
    assert {p.name for p in CLUSTER_EXAMPLES} == {'remote_example.yml', 'kubeflow_example.yml'}


def _with_placeholders_filled(path: Path, tmp_path: Path) -> Path:
    """A copy whose SSH key files exist (NNI's schema checks that the key file is there)."""
    import yaml
    raw = yaml.safe_load(path.read_text())
    key = tmp_path / 'id_placeholder'
    key.write_text('placeholder\n')
    for machine in raw['trainingService'].get('machineList', []):
        machine['sshKeyFile'] = str(key)
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(raw, sort_keys=False))
    return copy


@pytest.mark.parametrize('path', CLUSTER_EXAMPLES, ids=lambda p: p.name)
def test_cluster_example_validates_with_nni_schema_and_runs_our_trial(path, tmp_path):
    config = load_experiment_config(_with_placeholders_filled(path, tmp_path))
    assert config.training_service.platform in ('remote', 'kubeflow')
    assert config.trial_gpu_number == 1 and config.nni_manager_ip
    flags = set_flags_of(config.trial_command)
    for layer in search_space_layers(config.search_space) or [{}]:
        resolve_config(flags, layer)


def test_remote_example_machines_follow_the_gpu_dispatch_rules(tmp_path):
    config = load_experiment_config(_with_placeholders_filled(REPO / 'experiment_configs' / 'remote_example.yml',
                                                              tmp_path))
    machines = config.training_service.machine_list
    assert all(m.use_active_gpu for m in machines)  # NNI skips busy GPUs otherwise, and trials can wait forever
    assert [m.max_trial_number_per_gpu for m in machines] == [2, 1]  # 1-GPU machine: a 0.5 request; 4-GPU: whole
    assert config.trial_concurrency == 1 + 4


def test_a_cluster_example_with_an_unknown_key_is_rejected(tmp_path):
    path = _with_placeholders_filled(REPO / 'experiment_configs' / 'kubeflow_example.yml', tmp_path)
    path.write_text(path.read_text().replace('operator:', 'operater:'))
    with pytest.raises(ValueError, match='operater'):
        load_experiment_config(path)
