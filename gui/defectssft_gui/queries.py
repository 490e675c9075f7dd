"""What the browse grid lists: ``defectssft.queries`` (the core) does the work."""

from defectssft.queries import (
    DEFAULT_UNCERTAIN_MARGIN,
    SIMPLE_FILTERS,
    SORTS,
    QueryError,
    Row,
    check_filter,
    current_model,
    fetch_rows,
    model_classes,
)

__all__ = [
    "DEFAULT_UNCERTAIN_MARGIN",
    "SIMPLE_FILTERS",
    "SORTS",
    "QueryError",
    "Row",
    "check_filter",
    "current_model",
    "fetch_rows",
    "model_classes",
]
