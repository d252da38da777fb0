"""Run configs: get_config() files for calm_jax.main (default.py is the base, dataset.py the
dataset table, base.py the shared sections)."""
