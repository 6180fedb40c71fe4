"""Data augmentation for distillation: differentiable siamese augmentation (DSA) with replayable draws."""
from .dsa import DEFAULT_STRATEGY, DSA, DSA_FAMILIES, DSADraw, DSAParams, dsa, parse_strategy
