"""fer_models: IDEnNet and EIFN built on fer_kernels.nn, with losses, data, protocols and the CLI.

Importing the package registers the models (``list_models()``): ``idennet_{original,i,f,if}_{16,22,40}``,
the pre-training DenseNets ``densenet_bc_{16,22,40}`` (expressions) and ``densenet_bc_identity_{16,22,40}``
(identities), and ``eifn``, ``eifn_star``, ``efn``.
"""

from fer_models.registry import create_model, list_models, register_model  # noqa: I001  (first: the models register into it)
from fer_models.eifn import EIFN, EIFNOutput
from fer_models.idennet import DenseNetBC, IDEnNet, IDEnNetOutput
from fer_models.ipd_fer import IPDFER, IPDFEROutput
from fer_models.de_gan import DEGAN, DEGANOutput
from fer_models.losses import (
    CenterLoss,
    SelfConstrainedIdentityLoss,
    center_loss,
    self_constrained_identity_loss,
)

IDENNET_MODELS = tuple(list_models("idennet_*"))
PRETRAIN_MODELS = tuple(list_models("densenet_bc_*"))
EIFN_MODELS = ("efn", "eifn_star", "eifn")

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "IDEnNet",
    "IDEnNetOutput",
    "DenseNetBC",
    "EIFN",
    "EIFNOutput",
    "IPDFER",
    "IPDFEROutput",
    "DEGAN",
    "DEGANOutput",
    "CenterLoss",
    "SelfConstrainedIdentityLoss",
    "center_loss",
    "self_constrained_identity_loss",
    "IDENNET_MODELS",
    "PRETRAIN_MODELS",
    "EIFN_MODELS",
]
