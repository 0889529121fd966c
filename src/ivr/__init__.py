"""ivr: placeholder package; later issues fill it."""
