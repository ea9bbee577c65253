"""Reports of trained runs (``mdprune report``): tables, plots and the budget check.

``inputs`` reads manifests and grid JSON, ``channels`` derives channel usage, ``checks`` holds
the budget check, ``plots`` draws the PNGs, ``render`` writes the JSON rows and the markdown,
``build`` ties them together (``build_report``).

Reads JSON only: may import ``multidomain``'s torch-free modules (``arch``, ``files``,
``stats``) and matplotlib; never torch, ``training`` or the servers.
"""
