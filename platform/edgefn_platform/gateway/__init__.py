"""The gateway: public function traffic, the admin API, and the worker processes."""

from ._assets import InvalidAssets, pack_assets
from ._deploy import Deployer, deploy_directory
from ._errors import GatewayError
from .config import GatewayConfig, TokenError, load_token
from .server import run, run_worker

__all__ = [
    "Deployer",
    "GatewayConfig",
    "GatewayError",
    "InvalidAssets",
    "TokenError",
    "deploy_directory",
    "load_token",
    "pack_assets",
    "run",
    "run_worker",
]
