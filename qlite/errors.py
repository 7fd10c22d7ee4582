"""One exception type for problems a user can fix (bad input, bad option, missing model)."""


class QliteError(Exception):
    """A user-facing error: the message alone must say what is wrong and where."""


class InputError(QliteError):
    """Malformed input data; the message names the file and line."""

    def __init__(self, path, line, message):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}")
