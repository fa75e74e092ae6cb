"""civt-pipe's Python API: train any model from a civt-pipe logit store (docs/api.md).

``import civt_pipe`` stays light (no torch): each name is imported from
``civt_pipe.pipeline.api`` on first use, so ``civt-pipe --help``, which imports this package
first, starts at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline.api import (
        ReplayedViews,
        Store,
        StoreError,
        TopKLogits,
        UserError,
        ViewBatch,
        create_model,
        dense_targets,
        distillation_loss,
        list_models,
        load_model,
        open_store,
    )

__all__ = [
    "ReplayedViews",
    "Store",
    "StoreError",
    "TopKLogits",
    "UserError",
    "ViewBatch",
    "create_model",
    "dense_targets",
    "distillation_loss",
    "list_models",
    "load_model",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .pipeline import api

    value = getattr(api, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
