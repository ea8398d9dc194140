"""``python -m adios_ssl.linear ARGS`` = solo-learn's ``main_linear.py ARGS`` with the ADIOS methods registered."""
from .sololearn.scripts import run

if __name__ == "__main__":
    run("linear")
