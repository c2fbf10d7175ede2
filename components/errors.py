"""The one exception type for problems a user can cause and fix (bad data, bad config, missing server)."""


class EdgepipeError(Exception):
    """A user-fixable problem. The message names the file or key and says what to do; the CLI prints it
    without a traceback."""
