"""fastc1k: a Cython epoll HTTP/1.1 server and the tools that find one machine's limits."""
from ._compat import EngineError, c_available, load_engine
from .config import ConfigError, ServerConfig
from .routes import Request, Route, Routes
from .server import Server, running_server

__version__ = "0.1.0"

__all__ = [
    "ServerConfig", "ConfigError", "Routes", "Route", "Request", "Server", "running_server",
    "load_engine", "c_available", "EngineError", "__version__",
]
