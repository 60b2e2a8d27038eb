"""vimc's benchmark scripts, each run as ``python benchmarks/<name>.py`` (its docstring says
how). They time through ``vimc.timing``, print ``vimc.machine``'s header and save results under
``benchmarks/results/``, named by machine. A package so that the tests import them as
``benchmarks.<name>`` from the repository root."""
