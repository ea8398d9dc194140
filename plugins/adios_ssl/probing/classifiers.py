"""The two frozen-feature probes, with fixed settings (the same for every checkpoint, nothing
tuned on the test split), and their top-1 accuracies (%) overall and per domain.

- linear: ``StandardScaler`` then ``LogisticRegression(C=1.0, lbfgs, max_iter=1000)`` fitted on
  the train features, scored on the test features;
- k-NN: cosine similarity on L2-normalised features, ``k=20`` nearest train images, majority
  vote (``KNeighborsClassifier(metric="cosine", algorithm="brute")``).

Features are ``(N, D)`` float arrays, labels ``(N,)`` integer arrays.
"""
from __future__ import annotations

import time
from typing import Sequence, Tuple

import numpy as np

LINEAR_C = 1.0
LINEAR_MAX_ITER = 1000
KNN_K = 20


def linear_predictions(train_x, train_y, test_x, C: float = LINEAR_C,
                       max_iter: int = LINEAR_MAX_ITER) -> Tuple[np.ndarray, dict]:
    """``(test predictions, settings)`` of the linear probe (``converged``: lbfgs stopped before
    ``max_iter``)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(scaler.transform(train_x), train_y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    info = {"C": C, "max_iter": max_iter, "n_iter": int(np.max(clf.n_iter_)), "converged": converged}
    return clf.predict(scaler.transform(test_x)), info


def knn_predictions(train_x, train_y, test_x, k: int = KNN_K) -> Tuple[np.ndarray, dict]:
    """``(test predictions, settings)`` of the cosine k-NN probe (``k`` capped at the train
    size)."""
    from sklearn.neighbors import KNeighborsClassifier

    k = min(k, len(train_x))
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(train_x, train_y)
    return clf.predict(test_x), {"k": k, "metric": "cosine", "weights": "uniform"}


def accuracies(pred: np.ndarray, labels: np.ndarray, domains: Sequence[str]) -> dict:
    """Top-1 accuracy (%) overall and per domain."""
    correct = np.asarray(pred) == np.asarray(labels)
    domains = np.asarray(domains)
    return {"overall": float(100 * correct.mean()),
            "per_domain": {d: float(100 * correct[domains == d].mean()) for d in sorted(set(domains))},
            "n": int(len(correct))}


def probe_features(train_x, train_y, test_x, test_y, test_domains, C: float = LINEAR_C,
                   max_iter: int = LINEAR_MAX_ITER, k: int = KNN_K) -> dict:
    """Both probes on given features: ``{"linear": {...}, "knn": {...}}``, each with its
    accuracies, settings and CPU seconds."""
    out = {}
    start = time.process_time()
    pred, info = linear_predictions(train_x, train_y, test_x, C, max_iter)
    out["linear"] = dict(accuracies(pred, test_y, test_domains), **info,
                         cpu_seconds=time.process_time() - start)
    start = time.process_time()
    pred, info = knn_predictions(train_x, train_y, test_x, k)
    out["knn"] = dict(accuracies(pred, test_y, test_domains), **info,
                      cpu_seconds=time.process_time() - start)
    return out
