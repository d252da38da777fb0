"""Run configs: get_config() files for calm_jax.main (base.py holds the shared sections)."""
