"""Experiments that answer a question about training (which cell, what averaging buys), apart from
the scripts that train the shipped models; each writes or prints its own figures."""
