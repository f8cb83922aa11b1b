"""The experiment config: dataclass schema (single source of truth), composition and validation."""

from segformer_tao.config.compose import compose_config, to_yaml_without_secrets, validate
from segformer_tao.config.schema import ACTIONS, ExperimentConfig

__all__ = ["ACTIONS", "ExperimentConfig", "compose_config", "to_yaml_without_secrets", "validate"]
