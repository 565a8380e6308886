"""Local development: the stand-ins (ML functions, a webhook receiver), the Pub/Sub
emulator, and `python -m service.dev`."""
