"""``python -m gradmatch.domainbed.train ARGS``: DomainBed's own ``domainbed.scripts.train``,
unmodified, with the plugin's algorithms registered. Takes exactly DomainBed's arguments."""
import runpy


def main() -> None:
    from .register import register

    register()
    runpy.run_module("domainbed.scripts.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
