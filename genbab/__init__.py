"""genbab: a neural-network verifier for general nonlinearities.

``genbab.verify`` runs one verification (see ``genbab.verify.verify``); the
heavy dependencies are imported only when it is first used.
"""
__version__ = "0.1.0"


def __getattr__(name):
    if name in ("verify", "Result"):
        from genbab import verify as _verify_module
        return getattr(_verify_module, name)
    if name == "Config":
        from genbab.config import Config
        return Config
    raise AttributeError(name)
