"""Experiment tooling on top of the library: grids of runs (:mod:`vitmim.lab.grid`) and the
report that reads their folders (:mod:`vitmim.lab.report`)."""
