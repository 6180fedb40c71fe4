"""Dataset distillation: expert trajectories, MTT / ATT trajectory matching (unrolled or exact recomputed
meta-gradient), distribution matching (DM), presets, checkpoints and end-to-end runs."""
from .dm import DistributionMatching
from .experts import (
    ExpertConfig, ExpertFileError, ExpertPool, ExpertTrajectory, create_arch, expert_filename, flat_params,
    generator_for, param_spec, save_trajectory, train_expert, train_experts,
)
from .matching import (
    ATT_NORMS, GRAD_MODES, FlatModel, MatchResult, Shards, StepPlan, match_recompute, match_unrolled, plan_steps,
    trajectory_match,
)
from .presets import METHODS, PRESETS, DistillConfig, get_preset, list_presets, parse_override
from .run import DistillData, build_set, make_evaluator, model_kwargs, prepare_data, run_distill, run_experts
from .state import CHECKPOINT_FILE, DistillationDiverged, check_finite_state, load_checkpoint, save_checkpoint
from .tm import TrajectoryMatching, init_synthetic
