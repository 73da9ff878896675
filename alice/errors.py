"""The one exception type for bad input, so the CLI and the app can show its message and carry on."""

from pathlib import Path


class InputError(ValueError):
    """Bad input from a user: the message names the file and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
