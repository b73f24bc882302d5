"""HyDiscGAN's Flower Strategy and the aggregation rules it can use."""

from strategies.aggregation import RULE_NAMES, ComponentAggregator, make_rule
from strategies.hydiscgan import HyDiscGANStrategy, TooFewRepliesError
from strategies.records import STAGE_COMPONENTS

__all__ = ["RULE_NAMES", "STAGE_COMPONENTS", "ComponentAggregator", "HyDiscGANStrategy", "TooFewRepliesError",
           "make_rule"]
