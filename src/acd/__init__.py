"""acd: placeholder package; later issues fill it."""
