"""Live servers for the tests: the package's own child-process launcher."""

from stagelr_service.server import ServerProcess, run_cli, start_server

LiveServer = ServerProcess

__all__ = ["LiveServer", "ServerProcess", "run_cli", "start_server"]
