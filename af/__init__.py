"""The public Python API of af, a facade over the compiler (`afc`) and the runtime (`afrt`).

    import af
    af.validate("agent.af")                 # -> list[Diagnostic]
    bundle = af.compile("agent.af")          # -> Path of the written .afb
    agent = af.load(bundle)                  # -> afrt.Agent; agent.infer(array)
    af.from_sklearn(mlp, scaler, output="mlp.af")   # a fitted scikit-learn MLP -> AgentFile

Names are resolved on first use so that `import af` stays cheap.
"""

from __future__ import annotations

import importlib
import typing

from afcore import __version__ as __version__

#: public name -> (module, attribute)
_EXPORTS = {
    "AgentFile": ("afc", "AgentFile"),
    "Swarm": ("afrt", "Swarm"),
    "compile": ("afc", "compile_file"),
    "from_sklearn": ("afc", "from_sklearn"),
    "load": ("afrt", "load"),
    "load_agent_file": ("afc", "load_agent_file"),
    "validate": ("afc", "validate"),
    "write_agent_file": ("afc", "write_agent_file"),
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> typing.Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'af' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
