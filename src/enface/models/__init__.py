"""3D->2D model zoo.

Every model maps a volume ``(N, C_in, H, W, D)`` to en-face logits ``(N, C_out, H, W)``
(no sigmoid inside), padding internally and cropping back so any ``H, W >= 1`` works.

    >>> from enface.models import create_model, list_models
    >>> model = create_model("fpn", out_channels=1, width=0.25)
"""

from enface.models.registry import count_parameters, create_model, list_models, model_spec, register_model

# Importing the architecture modules registers them.
from enface.models import fpn  # noqa: F401,E402
from enface.models import ipn, ipnv2, lachinov  # noqa: F401,E402

__all__ = ["create_model", "list_models", "register_model", "count_parameters", "model_spec"]
