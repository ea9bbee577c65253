"""What training, reporting and the servers share: the architecture spec (``arch``), the network
(``network``), channel groups (``groups``), parameter/MAC counting (``costs``), latency tables
(``latency``), preprocessing (``preprocess``), the artifact format (``artifact``) and where an
artifact is found in a model store (``store``), the served form (``fold``), one compact weight set
for every domain (``compact``), the serving core (``serving``), and torch-free helpers for files
(``files``) and numbers over domains (``stats``).

Imports: torch, numpy, Pillow and safetensors only (torchvision is a test reference, never
imported here); nothing of this project outside ``multidomain``, and never a web framework:
TorchServe archives ship a copy of this package and nothing else of the project. ``arch``,
``costs``, ``files`` and ``stats`` import no torch, so ``reporting`` may use them.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

try:
    #: The installed distribution's version (``unknown`` when run from a source tree only)
    __version__ = _distribution_version("multidomain-pruning")
except PackageNotFoundError:
    __version__ = "unknown"
