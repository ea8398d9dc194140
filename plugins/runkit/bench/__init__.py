"""What every speed or memory measurement shares, one job per module:

- :mod:`.env`: the machine and library record of a result file, thread-pool sizing, device set-up;
- :mod:`.timing`: wall-clock timing of calls, interleaved across variants after a warm-up, with an
  optional time cap, and the statistics of the samples (medians, quartiles, paired ratios);
- :mod:`.memory`: peak memory (process RSS on the CPU, the allocator's peak on CUDA) and the
  activations autograd saves;
- :mod:`.child`: running one function in a fresh process (for peak-memory figures);
- :mod:`.output`: the JSON, CSV and PNG of a benchmark;
- :mod:`.plot`: the bar panel the benchmark plots share.

The measurements themselves live next to the code they time (:mod:`gradmatch.speed`,
:mod:`gradmatch.domainbed.speed`, :mod:`adios_ssl.speed`); ``benchmarks/`` calls them and prints
the tables. Importing this package (or :mod:`.env`, :mod:`.child`, :mod:`.output`) imports no
torch, so a script can size the thread pools first.
"""
