"""``python -m adios_ssl.umap ARGS`` = solo-learn's ``main_umap.py ARGS`` with the ADIOS methods registered."""
from .sololearn.scripts import run

if __name__ == "__main__":
    run("umap")
