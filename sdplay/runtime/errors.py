"""The one exception type for input a user can fix.

Raised anywhere below the UI; the UI edge turns it into a `gr.Error` with the same message.
"""


class UserError(ValueError):
    """Bad input (a number out of range, a corrupt upload, an unsafe model path): the message says how to fix it."""
