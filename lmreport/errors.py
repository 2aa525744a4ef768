"""Errors meant for the user: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """A problem with input or setup that the user can fix; str(e) says what and how."""


class InputFileError(UserError):
    """A file that cannot be read as what it should be; the message names the file."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
