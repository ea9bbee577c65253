"""Reports of trained runs (``mdprune report``): tables, plots and the budget check.

``inputs`` reads manifests and grid JSON, ``counts`` counts every ratio from the weights'
tensor shapes (safetensors headers), ``scores`` computes the Visual Decathlon S-score and the
efficiency figures, ``seeds`` groups runs over seeds (mean ± std, and the rule that calls a
difference real), ``channels`` derives channel usage, ``checks`` holds the budget check,
``plots`` draws the PNGs, ``render`` writes the JSON rows and the markdown, ``build`` ties them
together (``build_report``).

Reads JSON and safetensors headers only: may import ``multidomain``'s torch-free modules
(``arch``, ``costs``, ``files``, ``stats``), safetensors and matplotlib; never torch,
``training`` or the servers.
"""
