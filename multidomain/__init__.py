"""What training and serving share: the architecture and network, cost counting, evaluation
preprocessing, the artifact format and the serving core (``serving.py``).

Imports: torch, numpy, Pillow and safetensors only (torchvision is a test reference, never
imported here). Never ``training``,
``reporting``, ``service``, ``torchserving``, ``devtools`` or a web framework: TorchServe
archives ship a copy of this package and nothing else of the project.
"""
