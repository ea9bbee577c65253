"""Command-line entry point on top of every package: dispatches to the offline part
(``training``, ``reporting``) and the online part (``service``), importing each lazily, per
command."""
