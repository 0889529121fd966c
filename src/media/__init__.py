"""media: placeholder package; later issues fill it."""
