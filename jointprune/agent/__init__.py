"""RL agent: replay buffer, environment representation (+ reward decoder) and Soft Actor-Critic."""
from .env_repr import EnvironmentRepresentation, RewardDecoder, fit_decoder
from .replay import ReplayBuffer
from .sac import GaussianActor, SoftActorCritic

__all__ = ["EnvironmentRepresentation", "GaussianActor", "ReplayBuffer", "RewardDecoder", "SoftActorCritic", "fit_decoder"]
