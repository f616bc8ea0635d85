"""The error raised for bad experiment input: it says where (file, key path) and what to do."""


class ConfigError(ValueError):
    """An experiment file, override or combination of keys that cannot run.

    The CLI prints ``str(error)`` as one line and exits with status 2, so line breaks that a key or
    value brings in (``"a\\nb": 1``) are shown escaped.
    """

    def __str__(self) -> str:
        return super().__str__().replace("\r", "\\r").replace("\n", "\\n")
