"""fax: placeholder package; later issues fill it."""
