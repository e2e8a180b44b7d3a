"""3D->2D model zoo.

Every model maps a volume ``(N, C_in, H, W, D)`` to en-face logits ``(N, C_out, H, W)``
(no sigmoid inside), padding internally and cropping back so any ``H, W >= 1`` works.

    >>> from enface.models import create_model, list_models
    >>> model = create_model("fpn", out_channels=1, width=0.25)

Each architecture's module registers its constructors when imported (re-exported here, so
that importing the package registers them all).
"""

from enface.models.fpn import fpn, resensnet
from enface.models.ipn import ipn
from enface.models.ipnv2 import ipnv2
from enface.models.lachinov import lachinov
from enface.models.registry import count_parameters, create_model, list_models, model_spec, register_model

__all__ = [
    "count_parameters",
    "create_model",
    "fpn",
    "ipn",
    "ipnv2",
    "lachinov",
    "list_models",
    "model_spec",
    "register_model",
    "resensnet",
]
