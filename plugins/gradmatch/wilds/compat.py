"""Make wilds 2.0.0 work on the current stack (torch 2.x without torch-scatter, pandas 3) without
patching installed files.

* :func:`ensure_torch_scatter` registers a pure-torch ``torch_scatter`` stand-in when the compiled
  package is absent. wilds imports it lazily in ``wilds.common.utils.avg_over_groups``, which every
  group-wise ``dataset.eval`` (Camelyon17, CivilComments, FMoW, Poverty, Amazon, ...) calls.
* :func:`pandas_legacy_strings` turns off pandas 3's default ``str`` dtype inference while a WILDS
  dataset is built: ``CivilCommentsDataset`` writes integer split ids into its string ``split``
  column and fails with ``TypeError: Invalid value '0' for dtype 'str'`` otherwise.
* :func:`get_wilds_dataset` is the loader to use: ``wilds.get_dataset`` inside that context, with
  one clear error for a dataset that is not on disk.

Call :func:`apply_compat` once at start-up (e.g. in a CLI) before anything evaluates.
"""
import contextlib
import sys
import types
import warnings

import pandas as pd
import torch
import wilds
from wilds.datasets.wilds_dataset import WILDSDataset

_TORCH_REDUCE = {"sum": "sum", "add": "sum", "mean": "mean", "max": "amax", "min": "amin"}


def _scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
    """Pure-torch ``torch_scatter.scatter``: reduce the slices of ``src`` that share an ``index``.

    ``src``: any shape; ``index``: int64, either ``src``'s shape or 1-D of length ``src.size(dim)``
    (then broadcast along ``dim``, as torch_scatter does). Returns ``src``'s shape with size
    ``dim_size`` (default ``index.max() + 1``) along ``dim``. ``reduce``: ``sum``/``add``, ``mean``
    (integer inputs: floor division), ``max``, ``min``. Output positions that receive nothing are 0,
    as in torch_scatter. ``out`` is not supported (wilds never passes it).
    """
    if out is not None:
        raise NotImplementedError("the gradmatch torch_scatter stand-in does not support out=")
    if reduce not in _TORCH_REDUCE:
        raise ValueError(f"reduce must be one of {sorted(_TORCH_REDUCE)}, got {reduce!r}")
    dim = dim % src.dim()
    if index.dim() == 1 and src.dim() > 1:
        shape = [1] * src.dim()
        shape[dim] = -1
        index = index.view(shape)
    index = index.expand_as(src)
    size = list(src.shape)
    size[dim] = dim_size if dim_size is not None else (int(index.max()) + 1 if index.numel() else 0)
    zeros = torch.zeros(size, dtype=src.dtype, device=src.device)
    return zeros.scatter_reduce(dim, index, src, _TORCH_REDUCE[reduce], include_self=False)


def ensure_torch_scatter() -> bool:
    """Make ``import torch_scatter`` work. Idempotent.

    Returns False when the real package imports (nothing is done), True when ``torch_scatter``
    is (now) the pure-torch stand-in in ``sys.modules``. A compiled torch-scatter that fails to
    load (``ImportError``/``OSError``, e.g. built for another torch) is replaced as well. The
    stand-in has only ``scatter``: libraries that probe for the full package (torch_geometric)
    would be misled, so do not use it in processes that need those.
    """
    if getattr(sys.modules.get("torch_scatter"), "GRADMATCH_STANDIN", False):
        return True
    try:
        import torch_scatter  # noqa: F401
        return False
    except (ImportError, OSError):
        pass
    module = types.ModuleType("torch_scatter", "Pure-torch stand-in for torch_scatter.scatter (gradmatch).")
    module.scatter = _scatter
    module.GRADMATCH_STANDIN = True
    sys.modules["torch_scatter"] = module
    return True


@contextlib.contextmanager
def pandas_legacy_strings():
    """Context in which pandas infers ``object`` (not ``str``) dtype for text, as pandas < 3 did.

    Sets ``future.infer_string=False`` (deprecated in pandas 3, slated for removal in pandas 4)
    and silences that option's own deprecation warning. A no-op on pandas < 3.
    """
    if int(pd.__version__.split(".")[0]) < 3:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*future.infer_string.*")
        with pd.option_context("future.infer_string", False):
            yield


def apply_compat() -> None:
    """Apply the process-wide fixes (the ``torch_scatter`` stand-in). Idempotent.

    The pandas fix is deliberately scoped rather than global: build datasets with
    :func:`get_wilds_dataset` (or inside :func:`pandas_legacy_strings`).
    """
    ensure_torch_scatter()


def get_wilds_dataset(name: str, root_dir: str = "data", download: bool = False, **dataset_kwargs) -> WILDSDataset:
    """``wilds.get_dataset(name, root_dir=..., download=..., **dataset_kwargs)`` with the fixes active.

    ``dataset_kwargs`` go to ``wilds.get_dataset`` (``version``, ``unlabeled``, ``split_scheme``,
    ``fold``, ...). Raises ``ValueError`` for a name not in ``wilds.supported_datasets`` and, when
    ``download`` is False and ``{root_dir}/{name}_v{version}/RELEASE_v{version}.txt`` is missing,
    a ``FileNotFoundError`` naming that folder and the ``--download`` flag.
    """
    if name not in wilds.supported_datasets:
        raise ValueError(f"unknown WILDS dataset {name!r}; expected one of {wilds.supported_datasets}")
    apply_compat()
    try:
        with pandas_legacy_strings():
            return wilds.get_dataset(name, root_dir=root_dir, download=download, **dataset_kwargs)
    except FileNotFoundError as err:
        tb = err.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        if tb.tb_frame.f_code is not WILDSDataset.download_dataset.__code__:
            raise  # a file missing inside an existing dataset folder: WILDS' own message is precise
        dataset = tb.tb_frame.f_locals["self"]
        data_dir = tb.tb_frame.f_locals["data_dir"]
    raise FileNotFoundError(
        f"WILDS dataset {name!r} (version {dataset.version}) is not in {data_dir}/ (that folder with "
        f"RELEASE_v{dataset.version}.txt is expected). Download it once with `gradmatch train ... "
        f"--download` (or download=True), or point root_dir at the folder that contains "
        f"{name}_v{dataset.version}/.")
