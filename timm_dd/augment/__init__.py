"""Data augmentation: differentiable siamese augmentation (DSA) with replayable draws; DD-Ranking's image CutMix."""
from .cutmix import cutmix_images
from .dsa import DEFAULT_STRATEGY, DSA, DSA_FAMILIES, DSADraw, DSAParams, dsa, parse_strategy
