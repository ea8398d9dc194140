"""``python -m adios_ssl.pretrain ARGS`` = solo-learn's ``main_pretrain.py ARGS`` with the ADIOS methods registered."""
from .sololearn.scripts import run

if __name__ == "__main__":
    run("pretrain")
