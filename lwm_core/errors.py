"""The one exception type users see.

Every error that comes from bad input (a path, a config key, a mesh, a prompt) is an `LWMError` whose
message is one line: what was wrong, the offending value, and what to do. The CLI prints it without a
traceback; library users can catch it. Bugs stay ordinary exceptions so they are never mistaken for
user errors.
"""


class LWMError(ValueError):
    """A user-facing error: one line that names the bad value and the fix."""
