"""The method's loop, as Lightning callbacks (JointPruneModule adds them itself)."""
from .agent_episodes import AgentEpisodes
from .reward_decoding import RewardDecoding
from .subnet_extraction import SubnetExtraction, extract_in_place

__all__ = ["AgentEpisodes", "RewardDecoding", "SubnetExtraction", "extract_in_place"]
