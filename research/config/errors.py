"""The error raised for bad experiment input: it says where (file, key path) and what to do."""

# Characters that end a line for str.splitlines and terminals, shown escaped so the error stays one line.
_LINE_BREAKS = str.maketrans({char: repr(char)[1:-1] for char in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


class ConfigError(ValueError):
    """An experiment file, override or combination of keys that cannot run.

    The CLI prints ``str(error)`` as one line and exits with status 2, so line breaks that a key or
    value brings in (``"a\\nb": 1``) are shown escaped.
    """

    def __str__(self) -> str:
        return super().__str__().translate(_LINE_BREAKS)
