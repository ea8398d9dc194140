"""``python -m adios_ssl.pretrain ARGS`` = solo-learn's ``main_pretrain.py ARGS`` with the ADIOS methods registered."""
import sys

from .sololearn.scripts import main

if __name__ == "__main__":
    sys.exit(main("pretrain"))
