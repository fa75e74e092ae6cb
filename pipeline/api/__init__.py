"""The public Python API, importable as ``civt_pipe`` (docs/api.md): what a training loop of
one's own needs from a store, built from the same pieces as the commands.

``civt_pipe.__all__`` lists the public names, each re-exported here; they are stable, and
everything else under ``civt_pipe.pipeline``, ``civt_pipe.stores`` and ``civt_pipe.cli`` is
internal and may change in any release.
"""

from __future__ import annotations

from ...stores.errors import StoreError as StoreError
from ...stores.topk import TopKLogits as TopKLogits
from ..models.factory import create_model as create_model
from ..models.factory import list_models as list_models
from ..replay.segments import ViewBatch as ViewBatch
from ..runtime.errors import UserError as UserError
from ..train import losses
from .models import load_model as load_model
from .store import Store as Store
from .store import open_store as open_store
from .targets import dense_targets as dense_targets
from .views import ReplayedViews as ReplayedViews

distillation_loss = losses.civt_loss
"""train-student's loss (paper Eq. 5) under its public name: one function, so the two agree."""
