"""What the entry points of both packages (``gradmatch``, ``adios_ssl``) share, so that neither
imports the other: strict JSON result files (:mod:`.jsonio`), the record of the code a run ran
(:mod:`.provenance`), the filters of known third-party warnings (:mod:`.quiet`) and the checks
of output folders (:mod:`.paths`), and the benchmarks' timing, memory and output machinery
(:mod:`.bench`).
Plain Python: importing it imports no torch."""
