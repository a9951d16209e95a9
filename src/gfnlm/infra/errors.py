"""The one error type users see: a sentence naming the problem and the fix, no traceback."""


class GfnlmError(Exception):
    """A problem the user can fix (bad config, missing file, unusable input)."""
