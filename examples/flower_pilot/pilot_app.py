"""Flower components of the pilot: secure-fl's ServerApp and ClientApp.

The ServerApp resolves ``config = "pilot.toml"`` against this directory, which Flower
ships to the SuperLink inside the app bundle.
"""

from pathlib import Path

from secure_fl.transport.flower.client_app import app as client
from secure_fl.transport.flower.server_app import make_server_app

server = make_server_app(base_dir=Path(__file__).resolve().parent)

__all__ = ["client", "server"]
