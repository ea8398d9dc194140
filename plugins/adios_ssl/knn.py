"""``python -m adios_ssl.knn ARGS`` = solo-learn's ``main_knn.py ARGS`` with the ADIOS methods registered."""
from .sololearn.scripts import run

if __name__ == "__main__":
    run("knn")
