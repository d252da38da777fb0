"""configs/demo.py: the README's name for the embedded default."""


def test_demo_is_the_default(load_config, parse_config):
  assert load_config("demo").to_dict() == load_config("default").to_dict()
  assert parse_config("demo").to_dict() == load_config("default").to_dict()


def test_demo_passes_the_setting_checks(load_config, check_settings):
  check_settings(load_config("demo"))
