"""User-facing errors: one line that names the problem and the fix."""


class FuseGPTError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits 2."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
