"""``python -m adios_ssl.umap ARGS`` = solo-learn's ``main_umap.py ARGS`` with the ADIOS methods registered."""
import sys

from .sololearn.scripts import main

if __name__ == "__main__":
    sys.exit(main("umap"))
