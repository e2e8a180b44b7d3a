"""3D->2D model zoo.

Every model maps a volume ``(N, C_in, H, W, D)`` to en-face logits ``(N, C_out, H, W)``
(no sigmoid inside), padding internally and cropping back so any ``H, W >= 1`` works.

    >>> from enface.models import create_model, list_models
    >>> model = create_model("fpn", out_channels=1, width=0.25)
"""

# Importing the architecture modules registers them.
from enface.models import (  # noqa: F401
    fpn,
    ipn,
    ipnv2,
    lachinov,
)
from enface.models.registry import count_parameters, create_model, list_models, model_spec, register_model

__all__ = ["count_parameters", "create_model", "list_models", "model_spec", "register_model"]
