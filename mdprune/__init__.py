"""Command-line entry point on top of every package: the app in ``cli``, the commands in
``commands`` (one module per concern). It dispatches to the offline part (``training``,
``reporting``) and the online part (``service``, ``torchserving``), importing each lazily, inside
the command that needs it, so that importing ``mdprune`` loads none of them (nor torch).
"""
