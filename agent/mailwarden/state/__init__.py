"""The state model: schema, validation, loading, migration and revisions."""

from .load import dump_state, load_state_file, load_state_text, validate_data
from .schema import CURRENT_VERSION, State

__all__ = ["CURRENT_VERSION", "State", "dump_state", "load_state_file", "load_state_text",
           "validate_data"]
