"""What training, reporting and the servers share: the architecture spec (``arch``), the network
(``network``), channel groups (``groups``), parameter/MAC counting (``costs``), latency tables
(``latency``), preprocessing (``preprocess``), the artifact format (``artifact``), the served
form (``fold``), one compact weight set for every domain (``compact``), the serving core
(``serving``), and torch-free helpers for files (``files``) and numbers over domains
(``stats``).

Imports: torch, numpy, Pillow and safetensors only (torchvision is a test reference, never
imported here); nothing of this project outside ``multidomain``, and never a web framework:
TorchServe archives ship a copy of this package and nothing else of the project. ``arch``,
``files`` and ``stats`` import no torch, so ``reporting`` may use them.
"""
