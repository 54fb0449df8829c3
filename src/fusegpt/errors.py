"""User-facing errors: one line that names the problem and the fix."""


class FuseGPTError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits 2."""
