"""The optimisers of Online DT's code (Zheng et al. 2022, facebookresearch/online-dt ``main.py``).

ODT trains the network with LAMB and the learned entropy temperature with its own
Adam (lr 1e-4, betas (0.9, 0.999), no warm-up, no weight decay). :func:`lamb` is
torch-optimizer's LAMB set up to take ODT's steps; :class:`WithTemperatureOptimizer`
steps, zeroes and saves the two as one optimizer, so the training loop, its
checkpoints and its learning-rate schedule treat them like a single AdamW.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from dtrl.errors import DtrlError

LAMB_EPS = 1e-8
"""ODT passes ``eps=1e-8`` to its LAMB."""
TEMPERATURE_BETAS = (0.9, 0.999)
"""ODT's temperature Adam: ``betas=[0.9, 0.999]``."""


def lamb(params: Iterable[Any], lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """torch-optimizer's LAMB configured as ODT's ``lamb.py`` (timm's NVIDIA-style LAMB).

    Both add ``weight_decay · w`` to the Adam step and scale it per tensor by the trust ratio
    ``|w| / |step|``. ``clamp_value=inf``: ODT does not clamp ``|w|`` (torch-optimizer's default clamps
    it at 10). ``debias=False``: ODT bias-corrects the moments, which the trust ratio cancels except in
    the small weight-decay term; torch-optimizer's ``debias=True`` would instead shrink every early step
    (``tests/train/test_odt_faithful.py`` checks the two against each other). ODT's LAMB also clips the global
    gradient norm at 1.0, a no-op after the training loop's clipping at 0.25.
    """
    try:
        import torch_optimizer
    except ImportError:
        raise DtrlError('optimizer=lamb needs torch-optimizer: pip install "dtrl[odt]"') from None
    return torch_optimizer.Lamb(
        params, lr=lr, betas=betas, eps=LAMB_EPS, weight_decay=weight_decay, clamp_value=math.inf, debias=False
    )


def temperature_adam(params: Iterable[torch.nn.Parameter], config: Any) -> torch.optim.Adam:
    """The temperature's own Adam at ``config.temperature_learning_rate``, as ODT's ``log_temperature_optimizer``."""
    return torch.optim.Adam(params, lr=config.temperature_learning_rate, betas=TEMPERATURE_BETAS)


class WithTemperatureOptimizer(torch.optim.Optimizer):
    """The network's optimizer and the temperature's own, stepped, zeroed and saved as one.

    ``param_groups`` are the network optimizer's (the same dicts), so a learning-rate
    scheduler built on this object warms up and decays the network's rate only; the
    temperature keeps its constant rate, as in ODT's code. One backward pass gives both
    their gradients (the losses of :mod:`dtrl.models.gaussian` train disjoint parameters).
    """

    def __init__(self, network: torch.optim.Optimizer, temperature: torch.optim.Optimizer) -> None:
        self.network, self.temperature = network, temperature
        super().__init__(network.param_groups, network.defaults)

    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]  # torch types step/state_dict with overloads
        self.network.step()
        self.temperature.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.network.zero_grad(set_to_none)
        self.temperature.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]  # torch types step/state_dict with overloads
        return {"network": self.network.state_dict(), "temperature": self.temperature.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]  # torch types step/state_dict with overloads
        if set(state_dict) != {"network", "temperature"}:
            raise DtrlError(
                "the saved optimizer state has no separate temperature optimizer: continue it with the "
                "temperature_learning_rate it was trained with"
            )
        self.network.load_state_dict(state_dict["network"])
        self.temperature.load_state_dict(state_dict["temperature"])
        self.param_groups = self.network.param_groups  # loading made new group dicts: the schedule must set those
