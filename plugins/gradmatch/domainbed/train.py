"""``python -m gradmatch.domainbed.train ARGS``: DomainBed's own ``domainbed.scripts.train``,
unmodified, with the plugin's algorithms registered. Takes exactly DomainBed's arguments;
``$GRADMATCH_DOMAINBED_WORKERS`` overrides DomainBed's 8 DataLoader workers per loader."""
import runpy


def main() -> None:
    from .register import register
    from .workers import apply_env

    register()
    apply_env()
    runpy.run_module("domainbed.scripts.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
