"""The search configuration: defaults, layering, refusal of unknown keys and bad values, ``--set`` parsing."""
from __future__ import annotations

import dataclasses
import json

import pytest

from nni_labelfree.experiment.config import STRATEGIES, SearchConfig, resolve_config
from nni_labelfree.experiment.trial import parse_set_flags

VALID_KEYS = sorted(f.name for f in dataclasses.fields(SearchConfig))

# Keys with a closed set of values, and keys that must be positive integers (config.py).
CHOICE_KEYS = ('strategy', 'label_mode', 'search', 'angle_fixed', 'angle_pool', 'angle_skip', 'angle_edges',
               'teacher_precision', 'queue_precision')
POSITIVE_INT_KEYS = ('channels', 'cells_per_stage', 'image_size', 'num_classes', 'epochs', 'batch_size')


# --- defaults ------------------------------------------------------------------------------------------------------
def test_defaults_are_the_dataclass_defaults():
    assert resolve_config() == SearchConfig()
    assert resolve_config(None, {}) == SearchConfig()


def test_defaults_are_a_valid_cpu_search():
    # Tunable numbers (epochs, num_images, ...) are calibrated elsewhere; pin only what the docs promise.
    config = resolve_config()
    assert (config.strategy, config.space, config.data) == ('rlnas', 'nasbench201', 'noise')
    assert config.strategy in STRATEGIES
    assert (config.num_classes, config.seed, config.label_mode, config.search) == (10, 0, 'uniform_once', 'auto')
    assert config.output_dir is None and config.evolution == {} and config.checkpoint_every == 0
    assert config.num_images is None or config.num_images >= config.batch_size
    assert config.accelerator == 'auto' and config.download is False  # runs offline on CPU


def test_default_mutable_fields_are_not_shared():
    first, second = resolve_config(), resolve_config()
    first.evolution['population'] = 3
    assert second.evolution == {}
    assert SearchConfig().evolution == {}


def test_resolved_config_round_trips_through_json(tmp_path):
    config = resolve_config({'epochs': 3, 'evolution': {'population': 8}, 'max_flops': 1.5e6})
    config.save(tmp_path / 'config.json')
    saved = json.loads((tmp_path / 'config.json').read_text())
    assert sorted(saved) == VALID_KEYS
    assert resolve_config(saved) == config


# --- layering ------------------------------------------------------------------------------------------------------
def test_later_layers_win():
    config = resolve_config({'epochs': 3, 'seed': 1, 'data': 'cifar10'}, {'epochs': 5}, None, {'data': 'noise'})
    assert (config.epochs, config.seed, config.data) == (5, 1, 'noise')


def test_a_key_absent_from_later_layers_keeps_the_earlier_value():
    config = resolve_config({'channels': 8}, {'seed': 4})
    assert (config.channels, config.seed) == (8, 4)
    assert config.epochs == SearchConfig().epochs


def test_hyphenated_keys_are_accepted_and_layer_with_underscored_ones():
    config = resolve_config({'cells_per_stage': 2}, {'cells-per-stage': 3, 'num-images': 64})
    assert (config.cells_per_stage, config.num_images) == (3, 64)


def test_layers_are_not_mutated():
    layer = {'cells-per-stage': 2, 'epochs': 4}
    resolve_config(layer)
    assert layer == {'cells-per-stage': 2, 'epochs': 4}


# --- unknown keys --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('bad, close', [('epochz', 'epochs'), ('chanels', 'channels'),
                                        ('learning-rat', 'learning_rate')])
def test_unknown_key_is_refused_with_a_close_match(bad, close):
    with pytest.raises(ValueError) as info:
        resolve_config({'epochs': 2}, {bad: 3})
    message = str(info.value)
    assert repr(bad.replace('-', '_')) in message
    assert f'Did you mean {close!r}?' in message
    assert all(key in message for key in VALID_KEYS)  # lists the valid keys


def test_unknown_key_without_a_close_match_lists_the_valid_keys():
    with pytest.raises(ValueError) as info:
        resolve_config({'zzqqxx': 1})
    message = str(info.value)
    assert "'zzqqxx'" in message and 'Did you mean' not in message
    assert 'Valid keys:' in message and 'epochs' in message


def test_unknown_key_in_an_early_layer_is_refused_even_if_later_layers_are_fine():
    with pytest.raises(ValueError, match='epochz'):
        resolve_config({'epochz': 3}, {'epochs': 3})


# --- invalid values ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('key', CHOICE_KEYS)
def test_value_outside_the_choices_is_refused(key):
    with pytest.raises(ValueError) as info:
        resolve_config({key: 'bogus'})
    message = str(info.value)
    assert key in message and "'bogus'" in message
    assert 'is not one of' in message


@pytest.mark.parametrize('value', ['uniform_once', 'shuffle_once', 'uniform_per_iteration', 'shuffle_per_iteration'])
def test_every_label_mode_is_accepted(value):
    assert resolve_config({'label_mode': value}).label_mode == value


@pytest.mark.parametrize('key', POSITIVE_INT_KEYS)
@pytest.mark.parametrize('value', [0, -1, 1.5, True, '3', None])
def test_positive_integer_keys_refuse_other_values(key, value):
    with pytest.raises(ValueError) as info:
        resolve_config({key: value})
    assert key in str(info.value)
    assert 'positive integer' in str(info.value)


def test_positive_integer_keys_accept_their_smallest_valid_value():
    config = resolve_config({'channels': 1, 'cells_per_stage': 1, 'image_size': 1, 'epochs': 1, 'batch_size': 1,
                             'num_classes': 2})
    assert config.channels == 1 and config.num_classes == 2


def test_a_single_random_class_is_refused():
    with pytest.raises(ValueError, match='num_classes must be at least 2'):
        resolve_config({'num_classes': 1})


@pytest.mark.parametrize('value', [0, 0.0, -0.1])
def test_non_positive_learning_rate_is_refused(value):
    with pytest.raises(ValueError, match='learning_rate must be positive'):
        resolve_config({'learning_rate': value})


@pytest.mark.parametrize('value', [[1, 2], 'population=3', 5])
def test_evolution_must_be_a_mapping(value):
    with pytest.raises(ValueError, match='evolution must be a mapping'):
        resolve_config({'evolution': value})


@pytest.mark.parametrize('key', ['learning_rate', 'weight_decay', 'momentum', 'min_learning_rate', 'max_flops',
                                 'max_params', 'max_minutes'])
def test_non_numeric_float_values_are_refused_naming_the_key(key):
    with pytest.raises(ValueError, match=key):
        resolve_config({key: 'abc'})


@pytest.mark.parametrize('key', ['seed', 'weight_decay', 'num_workers'])
def test_negative_values_are_refused_naming_the_key(key):
    with pytest.raises(ValueError, match=key):
        resolve_config({key: -1})


# --- parse_set_flags -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('pair, expected', [
    ('epochs=3', 3),
    ('seed=-1', -1),
    ('learning_rate=0.025', 0.025),
    ('weight_decay=0.0005', 0.0005),
    ('num_images=null', None),
    ('num_images=~', None),
    ('num_images=', None),
    ('nesterov=true', True),
    ('download=false', False),
    ('data=noise', 'noise'),
    ('data_root=../shared/data/images/cifar10_jpeg.tar.gz', '../shared/data/images/cifar10_jpeg.tar.gz'),
    ("accelerator='3'", '3'),
    ('evolution={population: 8, generations: 2}', {'population': 8, 'generations': 2}),
    ('devices=[0, 1]', [0, 1]),
])
def test_set_values_are_yaml_scalars(pair, expected):
    parsed = parse_set_flags([pair])
    assert parsed == {pair.split('=', 1)[0]: expected}
    assert type(parsed[pair.split('=', 1)[0]]) is type(expected)


def test_set_flags_combine_and_later_pairs_win():
    assert parse_set_flags(['epochs=3', 'data=noise', 'epochs=5']) == {'epochs': 5, 'data': 'noise'}
    assert parse_set_flags([]) == {}


def test_set_value_may_contain_equals_signs():
    assert parse_set_flags(['data_root=a=b']) == {'data_root': 'a=b'}


def test_set_key_whitespace_is_stripped():
    assert parse_set_flags([' epochs =3']) == {'epochs': 3}


@pytest.mark.parametrize('pair', ['epochs', '=3', '', '   '])
def test_malformed_set_pair_is_refused(pair):
    with pytest.raises(ValueError) as info:
        parse_set_flags(['epochs=2', pair])
    assert 'key=value' in str(info.value) and repr(pair) in str(info.value)


def test_parsed_set_flags_resolve():
    config = resolve_config(parse_set_flags(['epochs=2', 'num_images=null', 'nesterov=false', 'learning_rate=0.05']))
    assert (config.epochs, config.num_images, config.nesterov, config.learning_rate) == (2, None, False, 0.05)


@pytest.mark.parametrize('pair, expected', [('weight_decay=5e-4', 5e-4), ('learning_rate=1e-3', 1e-3),
                                            ('max_flops=2e6', 2e6)])
def test_scientific_notation_parses_as_float(pair, expected):
    value = parse_set_flags([pair])[pair.split('=', 1)[0]]
    assert isinstance(value, float) and value == pytest.approx(expected)


# --- ResNeSt stage depths ---------------------------------------------------------------------------------------
def test_stage_depths_build_resnest_in_the_papers_layout():
    from nni_labelfree.experiment.search import _build_space
    config = resolve_config({'strategy': 'pinas', 'space': 'resnest', 'channels': 4},
                            parse_set_flags(['stage_depths=[3,4,6,3]']))
    assert config.stage_depths == [3, 4, 6, 3]
    space = _build_space(config, num_classes=10)
    assert space.depths == (3, 4, 6, 3) and len(space.simplify()) == 16  # one choice per block: 4^16 paths
    flat = _build_space(resolve_config({'strategy': 'pinas', 'space': 'resnest', 'channels': 4,
                                        'cells_per_stage': 2}), num_classes=10)
    assert flat.depths == (2, 2, 2, 2)  # null: cells_per_stage in every stage, as before the key existed


def test_stage_depths_given_as_a_tuple_compare_equal_to_the_saved_list():
    from nni_labelfree.experiment.checkpoint import changed_settings
    from nni_labelfree.experiment.search import with_keys_added_later
    given = resolve_config({'space': 'resnest', 'stage_depths': (3, 4, 6, 3)})
    assert given.stage_depths == [3, 4, 6, 3] and isinstance(given.stage_depths, list)
    saved = json.loads(json.dumps(given.to_dict()))
    assert changed_settings(saved, resolve_config(saved).to_dict(), frozenset()) == ''
    assert with_keys_added_later({'space': 'resnest'})['stage_depths'] is None  # runs from before the key


@pytest.mark.parametrize('layer, message', [
    ({'space': 'resnest', 'stage_depths': [3, 4, 6]}, '4 positive integers'),
    ({'space': 'resnest', 'stage_depths': [3, 0, 6, 3]}, '4 positive integers'),
    ({'space': 'resnest', 'stage_depths': [3, 4, 6, 3.5]}, '4 positive integers'),
    ({'space': 'resnest', 'stage_depths': [3, 4, 6, 3.0]}, '4 positive integers'),
    ({'space': 'resnest', 'stage_depths': [3, 4, True, 3]}, '4 positive integers'),
    ({'space': 'resnest', 'stage_depths': '3,4,6,3'}, '4 positive integers'),
    ({'space': 'nasbench201', 'stage_depths': [3, 4, 6, 3]}, 'applies to space=resnest only'),
])
def test_bad_stage_depths_are_refused_with_the_fix(layer, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(layer)
