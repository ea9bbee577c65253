"""Command-line entry point: dispatches to the offline (training) and online (service) parts."""
