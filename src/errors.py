"""The two kinds of failure a job can meet, and how each reaches the user.

InputError: the user can fix it. Its message is one sentence naming the field; it goes
back as ``{"error": message}`` and is logged without a traceback. Anything else is an
internal error: the traceback goes to the log, the user gets one sentence and the job id.
"""


class InputError(ValueError):
    """A problem with the job's input that the user can fix."""
