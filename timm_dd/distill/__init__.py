"""Dataset distillation: expert trajectories, MTT / ATT trajectory matching (unrolled or exact recomputed
meta-gradient), distribution matching (DM), presets and end-to-end runs.

Runs: :func:`load_distillation_data`, :func:`run_experts`, :func:`run_distill` (what ``distill.py`` calls), with a preset
(:func:`get_preset`, :func:`list_presets`). Methods: :class:`TrajectoryMatching`, :class:`DistributionMatching`
on the shared :class:`Distiller` loop. Experts: :func:`train_experts`, :class:`ExpertPool`. The exact meta-gradient
as a building block: :func:`trajectory_match` with :class:`FlatModel` (or a :class:`StepGradient` of it, eager or
compiled) and :func:`plan_steps`; under a memory budget, :func:`match_budgeted` with :func:`graph_steps_for_budget`.
"""
from .distiller import Distiller
from .dm import DistributionMatching
from .experts import ExpertConfig, ExpertFileError, ExpertPool, ExpertTrajectory, save_trajectory, train_experts
from .graph_budget import graph_step_bytes, graph_steps_for_budget, parse_budget
from .matching import (
    ATT_NORMS, GRAD_MODES, FlatModel, MatchResult, Shards, StepGradient, StepPlan, match_budgeted, match_recompute,
    match_unrolled, plan_steps, trajectory_match,
)
from .presets import METHODS, PRESETS, DistillConfig, get_preset, list_presets
from .run import build_set, load_distillation_data, make_evaluator, prepare_data, run_distill, run_experts
from .state import DistillationDiverged
from .tm import TrajectoryMatching, init_synthetic

__all__ = [
    'Distiller', 'DistributionMatching', 'TrajectoryMatching', 'init_synthetic', 'ExpertConfig', 'ExpertFileError',
    'ExpertPool', 'ExpertTrajectory', 'save_trajectory', 'train_experts', 'ATT_NORMS', 'GRAD_MODES', 'FlatModel',
    'StepGradient', 'MatchResult', 'Shards', 'StepPlan', 'plan_steps', 'trajectory_match', 'match_unrolled',
    'match_recompute', 'match_budgeted', 'graph_step_bytes', 'graph_steps_for_budget', 'parse_budget', 'METHODS',
    'PRESETS',
    'DistillConfig', 'get_preset',
    'list_presets', 'build_set', 'make_evaluator', 'load_distillation_data', 'prepare_data', 'run_distill',
    'run_experts',
    'DistillationDiverged',
]
