"""Error types shared across the package. A leaf module: it imports nothing from ssd, so that
any module (the config, the data sets, the engine) can raise these without importing another."""


class ConfigError(ValueError):
    """A config key, value or file is wrong; the message says which and what was expected."""
