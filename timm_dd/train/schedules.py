"""Keep-rate and learning-rate schedules of the DP+KD recipe and the MTT evaluation protocol.

Both schedules are pure functions of (epoch, iteration) so a resumed run recomputes them exactly.
"""
import math
from dataclasses import asdict, dataclass
from typing import List

__all__ = ['KeepRateSchedule', 'LRSchedule', 'LR_SCHEDULES', 'warmup_cosine']

LR_SCHEDULES = ('periodic', 'periodic_decay', 'cosine', 'multistep', 'quarter_cosine', 'constant')


@dataclass(frozen=True)
class KeepRateSchedule:
    """The three-phase keep-rate schedule, applied at epoch boundaries.

    1. ``p = 1`` for the first ``period`` epochs;
    2. step down by ``delta`` every ``period`` epochs until ``p_min`` is reached in the last period before the
       final phase, ``delta = (1 - p_min) / ((epochs - final_epochs) / period - 1)``
       (0.1 for the defaults, 0.13 with ``p_min = 0.35`` for ResNet50);
    3. ``p = p_final`` for the last ``final_epochs`` epochs.

    ``enabled=False`` keeps ``p = 1`` throughout (the "w/o DP" ablations).
    """
    epochs: int = 4000
    final_epochs: int = 1000
    period: int = 500
    p_min: float = 0.5
    p_final: float = 0.8
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.period < 1 or not 0 <= self.final_epochs <= self.epochs:
            raise ValueError(f'keep-rate schedule needs epochs >= 1, period >= 1 and 0 <= final_epochs <= epochs, '
                             f'got epochs={self.epochs}, period={self.period}, final_epochs={self.final_epochs}')
        for name in ('p_min', 'p_final'):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f'{name} must be a keep rate in (0, 1], got {value}')

    @property
    def delta(self) -> float:
        num_periods = (self.epochs - self.final_epochs) // self.period
        return (1.0 - self.p_min) / (num_periods - 1) if num_periods > 1 else 0.0

    def __call__(self, epoch: int) -> float:
        if not self.enabled:
            return 1.0
        if epoch >= self.epochs - self.final_epochs:
            return self.p_final
        # round away float noise so the phase values print as 0.9, 0.8, ...
        return round(max(self.p_min, 1.0 - self.delta * (epoch // self.period)), 10)

    def to_dict(self) -> dict:
        return asdict(self)


def warmup_cosine(step: int, cycle_steps: int, warmup_steps: int) -> float:
    """Linear warmup from 0 over ``warmup_steps``, then a half cosine to 0 at ``cycle_steps`` (fraction of max)."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps) / max(1, cycle_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate factor (times the peak lr) for every optimizer step.

    * ``periodic`` (default of ``dpkd``; what the released DP+KD code executes): each keep-rate period of
      ``period`` epochs replays the first part of a ``final_epochs``-long cycle, a warmup of
      ``final_epochs // 10`` epochs then a cosine (reaching 0.587 of the peak at the end of a 500-epoch period
      for the defaults), restarting every period; the last ``final_epochs`` run one full warmup + cosine to 0.
      The peak stays constant. As in the reference the factor lags one iteration: the very first step uses 0 and
      the first step of every later period the value the previous period ended at (0.587 of the peak).
    * ``periodic_decay``: the same, with the peak multiplied by ``decay`` after every period and by a further
      ``gamma`` (x0.1) in the final phase (the code's evident intent, which never ran because its decay lines are
      dead code; the code does not say when its x0.1 was meant to apply: timm_dd applies it to the final phase).
    * ``cosine``: one warmup (10 %) + cosine cycle over all epochs (the "w/o DP" configurations);
      ``step_1999_quirk`` reproduces the released scheduler's ``if epoch == 1999`` branch, which doubles the warmup
      length from that step on (with 5 iterations per epoch the lr jumps from 0.751 to 0.854 of the peak).
    * ``multistep``: ``gamma`` at each of ``milestones`` epochs (the MTT protocol: x0.1 at half the epochs).
    * ``quarter_cosine``: ``0.5 * (1 + cos(pi/2 * epoch / epochs))`` per epoch, from 1 down to 0.5 (DD-Ranking's
      ``cosine``, a ``LambdaLR`` stepped after every epoch).
    * ``constant``.
    """
    name: str = 'periodic'
    epochs: int = 4000
    final_epochs: int = 1000
    period: int = 500
    decay: float = 0.8
    milestones: tuple = ()
    gamma: float = 0.1
    step_1999_quirk: bool = False

    def __post_init__(self) -> None:
        if self.name not in LR_SCHEDULES:
            raise ValueError(f'lr schedule must be one of {LR_SCHEDULES}, got {self.name!r}')

    def factor(self, epoch: int, iteration: int, iters_per_epoch: int) -> float:
        L = iters_per_epoch
        if self.name == 'constant':
            return 1.0
        if self.name == 'multistep':
            return self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        if self.name == 'quarter_cosine':
            return 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs / 2))
        if self.name == 'cosine':
            step, warmup = epoch * L + iteration, (self.epochs // 10) * L
            if self.step_1999_quirk and step >= 1999:  # the released scheduler doubles its warmup at step 1999
                warmup *= 2
            return warmup_cosine(step, self.epochs * L, warmup)
        cycle, warmup = self.final_epochs * L, (self.final_epochs // 10) * L
        final_start = self.epochs - self.final_epochs
        if iteration == 0 and 0 < epoch <= final_start and (epoch % self.period == 0 or epoch == final_start):
            # the released code steps its scheduler after each optimizer step, so the first step of a period (and
            # of the final phase) still runs at the lr set at the end of the previous period (0.587 x peak)
            return self.factor(epoch - 1, L, L)
        if epoch >= final_start:
            step = (epoch - final_start) * L + iteration
            num_decays = final_start // self.period
        else:
            step = (epoch % self.period) * L + iteration
            num_decays = epoch // self.period
        peak = 1.0
        if self.name == 'periodic_decay':
            peak = self.decay ** num_decays * (self.gamma if epoch >= final_start else 1.0)
        return peak * warmup_cosine(step, cycle, warmup)

    def trace(self, iters_per_epoch: int = 1) -> List[float]:
        """Factor at the first iteration of every epoch (for plots)."""
        return [self.factor(e, 0, iters_per_epoch) for e in range(self.epochs)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d['milestones'] = list(self.milestones)
        return d
