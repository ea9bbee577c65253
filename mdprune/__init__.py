"""Command-line entry point (``mdprune``): dispatches to the offline (``training``) and online
(``service``, ``torchserving``) parts. Imports them lazily, inside the command that needs them,
so that importing ``mdprune`` loads none of them (nor torch).
"""
