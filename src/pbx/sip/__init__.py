"""SIP protocol cores (sans-I/O) and their asyncio shell (aio.py)."""
