"""Local development: demo ML functions, the Pub/Sub emulator, and `python -m service.dev`."""
