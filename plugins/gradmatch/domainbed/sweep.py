"""``python -m gradmatch.domainbed.sweep ARGS``: DomainBed's own ``domainbed.scripts.sweep``,
unmodified, whose jobs run through ``gradmatch.domainbed.train`` so they see the plugin.

The sweep hard-codes each job as ``python -m domainbed.scripts.train ...``; every launcher in
DomainBed's shared ``command_launchers.REGISTRY`` is wrapped to run that as
``<this interpreter> -m gradmatch.domainbed.train ...`` instead. Output folders are DomainBed's
(hashes of the job arguments), so ``collect_results`` and ``delete_incomplete`` work as usual.
"""
import runpy
import sys

UPSTREAM = "python -m domainbed.scripts.train "


def plugin_command(command: str) -> str:
    """Rewrite one job command of DomainBed's sweep to run the plugin's train wrapper."""
    if command.startswith(UPSTREAM):
        return f"{sys.executable} -m gradmatch.domainbed.train " + command[len(UPSTREAM):]
    return command


def wrap_launchers() -> None:
    """Wrap every registered launcher (idempotent)."""
    from domainbed import command_launchers

    for name, launcher in list(command_launchers.REGISTRY.items()):
        if getattr(launcher, "gradmatch_wrapped", False):
            continue

        def wrapped(commands, _launcher=launcher):
            return _launcher([plugin_command(c) for c in commands])

        wrapped.gradmatch_wrapped = True
        command_launchers.REGISTRY[name] = wrapped


def main() -> None:
    from ..quiet import quiet_third_party
    from .register import register

    quiet_third_party()
    register()
    wrap_launchers()
    runpy.run_module("domainbed.scripts.sweep", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
