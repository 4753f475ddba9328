"""Flower components of the pilot: secure-fl's ServerApp and ClientApp.

Both resolve the run configuration's ``config = "pilot.toml"`` against this directory,
which Flower ships to the SuperLink and to every SuperNode inside the app bundle (the
ClientApp reads it only for the model architecture; what a site checks is the set-up
each message carries).
"""

from pathlib import Path

from secure_fl.transport.flower.client_app import make_client_app
from secure_fl.transport.flower.server_app import make_server_app

HERE = Path(__file__).resolve().parent
server = make_server_app(base_dir=HERE)
client = make_client_app(base_dir=HERE)

__all__ = ["client", "server"]
