"""Hard constraints for :func:`nni_labelfree.selection.evolve`: FLOPs/parameter limits and generic upper bounds.

A constraint is any callable ``arch -> bool``. The objects here also expose ``value(arch)`` (the constrained
quantity: a number or a dict of numbers) and ``limit`` (same shape), which lets the search report how close it
came when no legal architecture exists. RLNAS rejects illegal candidates before evaluating them (``legal()`` in
its evolution code, 600M MACs on DARTS-ImageNet), and so does :func:`~nni_labelfree.selection.evolve`.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # torch and nni load lazily: constraints on plain functions need neither
    from torch import nn

__all__ = ['FunctionConstraint', 'ProfilerConstraint']

_logger = logging.getLogger(__name__)


class FunctionConstraint:
    """Upper bound ``fn(arch) <= limit`` on any scalar function of an architecture.

    Parameters
    ----------
    fn
        Maps an arch dict to a number (e.g. a parameter count from a lookup table).
    limit
        Largest legal value (inclusive).
    name
        What ``fn`` measures; used in messages.
    """

    def __init__(self, fn: Callable[[dict], float], limit: float, name: str = 'value'):
        if not callable(fn):
            raise TypeError(f'fn must be callable arch -> number, got {type(fn).__name__}.')
        self.fn, self.limit, self.name = fn, float(limit), name

    def value(self, arch: Mapping[str, Any]) -> float:
        """The constrained quantity of ``arch``."""
        return float(self.fn(dict(arch)))

    def admits(self, value: float) -> bool:
        """Whether a measured :meth:`value` is within the limit."""
        return value <= self.limit

    def __call__(self, arch: Mapping[str, Any]) -> bool:
        return self.admits(self.value(arch))

    def __repr__(self) -> str:
        return f'FunctionConstraint({self.name} <= {self.limit:g})'


def _check_not_supernet(model_space: nn.Module) -> None:
    from nni.nas.nn.pytorch import ModelSpace
    from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

    if not isinstance(model_space, ModelSpace):
        raise TypeError(f'ProfilerConstraint needs an NNI ModelSpace (nni.nas.nn.pytorch.ModelSpace), got '
                        f'{type(model_space).__name__}.')
    if any(isinstance(m, BaseSuperNetModule) for m in model_space.modules()):
        raise ValueError('ProfilerConstraint got a space already mutated into a supernet by a one-shot strategy; '
                         'profile an un-mutated space instead: build a fresh instance (or deepcopy the space '
                         'before strategy.mutate_model()).')


class ProfilerConstraint:
    """FLOPs and/or parameter limits measured by NNI's ``FlopsParamsProfiler``.

    The profiler traces the space once into symbolic expressions (about 0.4 s for NAS-Bench-201), after which
    ``value(arch)`` costs well under a millisecond. FLOPs ignore the batch size; parameters include biases and BN
    affine parameters (NNI's defaults, adjustable through ``counter_kwargs``).

    Parameters
    ----------
    model_space
        An **un-mutated** NNI ``ModelSpace`` (not the supernet a one-shot strategy made of it).
    dummy_input
        Example input, e.g. ``torch.randn(1, 3, 32, 32)``; only its shape matters.
    max_flops, max_params
        Inclusive upper limits; at least one is required.
    **counter_kwargs
        Passed to ``FlopsParamsCounterConfig`` (``count_bias``, ``count_normalization``, ``count_activation``).
    """

    def __init__(self, model_space: nn.Module, dummy_input: Any, max_flops: float | None = None,
                 max_params: float | None = None, **counter_kwargs: bool):
        from nni.nas.profiler.pytorch.flops import FlopsParamsProfiler

        if max_flops is None and max_params is None:
            raise ValueError('ProfilerConstraint needs max_flops and/or max_params; both were None. Pass e.g. '
                             'max_flops=600e6 (the RLNAS DARTS-ImageNet limit).')
        self.limit = {k: float(v) for k, v in (('flops', max_flops), ('params', max_params)) if v is not None}
        for key, val in self.limit.items():
            if val <= 0:
                raise ValueError(f'max_{key} must be positive, got {val:g}.')
        _check_not_supernet(model_space)
        self.labels = {label: list(getattr(m, 'values', [])) for label, m in model_space.simplify().items()}
        try:
            self.profiler = FlopsParamsProfiler(model_space, dummy_input, **counter_kwargs)
        except Exception as exc:
            raise RuntimeError(f'NNI FlopsParamsProfiler could not trace {type(model_space).__name__} with the '
                               f'given dummy input ({exc}). Check the input shape, or register missing shape/FLOPs '
                               f'formulas (nni.nas.profiler.pytorch.utils.shape_formula, '
                               f'flops.register_flops_formula).') from exc

    def value(self, arch: Mapping[str, Any]) -> dict[str, float]:
        """``{'flops': ..., 'params': ...}`` of ``arch``."""
        from nni.mutable.exception import SampleMissingError, SampleValidationError

        try:
            result = self.profiler.profile(dict(arch))
        except (SampleMissingError, SampleValidationError) as exc:
            raise ValueError(f'Cannot profile arch {dict(arch)}: {exc}. Expected one value per label from '
                             f'{self.labels}.') from exc
        return {'flops': float(result.flops), 'params': float(result.params)}

    def admits(self, value: Mapping[str, float]) -> bool:
        """Whether a measured :meth:`value` is within every limit."""
        return all(value[key] <= lim for key, lim in self.limit.items())

    def __call__(self, arch: Mapping[str, Any]) -> bool:
        return self.admits(self.value(arch))

    def __repr__(self) -> str:
        limits = ', '.join(f'{k} <= {v:g}' for k, v in self.limit.items())
        return f'ProfilerConstraint({limits})'
