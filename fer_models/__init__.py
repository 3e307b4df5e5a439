"""fer_models: IDEnNet and EIFN built on fer_kernels.nn, with losses, data, protocols and the CLI."""

from fer_models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
