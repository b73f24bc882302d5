"""HyDiscGAN's Flower Strategy and the aggregation rules it can use."""

from strategies.aggregation import RULE_NAMES, ComponentAggregator, make_rule
from strategies.hydiscgan import STAGE_COMPONENTS, HyDiscGANStrategy, TooFewRepliesError

__all__ = ["RULE_NAMES", "STAGE_COMPONENTS", "ComponentAggregator", "HyDiscGANStrategy", "TooFewRepliesError",
           "make_rule"]
