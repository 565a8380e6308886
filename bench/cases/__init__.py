"""The cases of `python -m bench`, one module each: `async def run(bench, functions)`."""
