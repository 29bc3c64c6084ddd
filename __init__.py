"""pulsarfunc: Python functions for Apache Pulsar (PIP-32 in Python).

from pulsarfunc import Context, start

def exclaim(ctx: Context, text: str) -> str:
    return text + "!"

start(exclaim)
"""

from pulsarfunc._version import __version__
from pulsarfunc.runtime.batching import Batch, BatchItemFailures
from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee
from pulsarfunc.runtime.context import Context, current_context
from pulsarfunc.runtime.errors import PulsarFuncError, UserError
from pulsarfunc.runtime.start import start
from pulsarfunc.runtime.windows import WindowRecord

__all__ = [
    "Batch",
    "BatchItemFailures",
    "Context",
    "FunctionConfig",
    "ProcessingGuarantee",
    "PulsarFuncError",
    "UserError",
    "WindowRecord",
    "__version__",
    "current_context",
    "start",
]
