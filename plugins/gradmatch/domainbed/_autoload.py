"""Run at interpreter start by the ``.pth`` startup hook (see :mod:`gradmatch.domainbed.hook`).

Standard library only, and nothing imported until needed: it puts a finder at the front of
``sys.meta_path`` that lets ``domainbed.algorithms`` load as usual, then calls
:func:`gradmatch.domainbed.register.register`. The hook loads this file by path, under the name
``_gradmatch_domainbed_autoload`` (so the ``gradmatch`` package, which imports torch, is not
imported at start): hence no relative imports here.
"""
import sys

TARGET = "domainbed.algorithms"


class _Loader:
    """Runs the real loader of ``domainbed.algorithms``, then registers the plugin."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # get_source, get_data, ...: for tools that read __loader__
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        try:
            from gradmatch.domainbed.register import register

            register()
        except Exception as err:  # DomainBed itself still works: say why the plugin is missing
            import warnings

            warnings.warn(f"gradmatch's DomainBed startup hook could not register FishFast and IDGM: "
                          f"{err!r}. Remove the hook with `gradmatch domainbed remove-hook`.")


class _Finder:
    """A ``sys.meta_path`` finder that only wraps the loader the later finders give ``TARGET``."""

    gradmatch_autoload = True

    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path[sys.meta_path.index(self) + 1:]:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec else None
            if spec is not None:
                if hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once per interpreter)."""
    if not any(getattr(finder, "gradmatch_autoload", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
