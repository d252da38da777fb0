"""Small utilities shared across the package: atomic output files (`files`) and rate lines
of long phases (`progress`)."""
