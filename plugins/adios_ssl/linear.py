"""``python -m adios_ssl.linear ARGS`` = solo-learn's ``main_linear.py ARGS`` with the ADIOS methods registered."""
import sys

from .sololearn.scripts import main

if __name__ == "__main__":
    sys.exit(main("linear"))
