"""Regenerate the example photos: ``python -m skinapp.examples``."""

import logging

from skinapp.examples import write_examples

logging.basicConfig(level=logging.INFO)
for path in write_examples():
    logging.getLogger("skinapp.examples").info("wrote %s", path)
